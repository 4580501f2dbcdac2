"""Stage ``train``: the dual encoder on the augmented training split, logged to MLflow and registered.

With a frozen text tower (the default) every caption is encoded once and training runs the media towers and the
projection heads; with ``model.text_trainable_layers > 0`` the top blocks of the text model train too (at
``train.tuned_lr``, captions encoded every step), as do the top blocks of an ``st:`` image backbone with
``model.image_trainable_layers > 0``. Each epoch is scored on the validation split; the best epoch's weights are
kept and training stops early after ``train.patience`` epochs without improvement. A checkpoint is written every
epoch under ``var/checkpoints/<dataset>/<fingerprint>/`` (weights in safetensors, optimiser state read back with
``weights_only=True``); a rerun with the same params and data resumes the killed run. The new version gets the
``challenger`` alias; ``evaluate`` and ``promote`` decide whether it serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmretrieval import tracking
from mmretrieval.config import Params, Settings, get_settings
from mmretrieval.errors import ConfigError, TrainingError
from mmretrieval.io import read_json, read_parquet, write_json
from mmretrieval.metrics import resolve_metric
from mmretrieval.schema import Modality, Split, split_captions

log = logging.getLogger(__name__)
LOSSES = ("infonce", "triplet")


MEDIA = (Modality.IMAGE.value, Modality.AUDIO.value)


TUNED_PREFIXES = ("text_layers.", "image_layers.")  # DualEncoder's tuned blocks of pretrained towers


def param_groups(net: Any, lr: float, tuned_lr: float) -> list[dict[str, Any]]:
    """Trainable parameters: the tuned blocks of pretrained towers at ``tuned_lr``, everything else at ``lr``."""
    named = [(name, q) for name, q in net.named_parameters() if q.requires_grad]
    tuned = [q for name, q in named if name.startswith(TUNED_PREFIXES)]
    groups = [{"params": [q for name, q in named if not name.startswith(TUNED_PREFIXES)], "lr": lr}]
    return groups + ([{"params": tuned, "lr": tuned_lr}] if tuned else [])


def audio_aug_masks(policy: dict[str, Any]) -> tuple[int, float]:
    """SpecAugment mask sizes (mel bands, share of frames) from the augmentation policy; (0, 0.0) when off."""
    audio = policy.get("audio", {})
    return int(audio.get("freq_mask", 0)), float(audio.get("time_mask", 0.0))


def selection_key(val_metric: float | None, loss: float) -> tuple[float, float]:
    """Epochs compare by this key, the largest is kept: the validation gate metric when selection uses it (None:
    too few validation items, or none), ties (small validation parts saturate) going to the lower training loss."""
    return (val_metric if val_metric is not None else 0.0, -loss)


def _items(frame: Any) -> tuple[list[str], list[str], list[str], list[list[str]], list[str]]:
    """Trainable rows: media items (image, audio) with captions or labels."""
    from mmretrieval.evaluate import captions_of

    ids, modalities, media, caps, labels = [], [], [], [], []
    for _, row in frame[frame["modality"].isin(MEDIA)].iterrows():
        c = captions_of(row)
        c += [a for a in split_captions(row.get("aug_text", "")) if a not in c]  # materialised text augmentation
        if c:
            ids.append(row["id"])
            modalities.append(row["modality"])
            media.append(row["media"])
            caps.append(c)
            labels.append(str(row["label"]))
    return ids, modalities, media, caps, labels


def fingerprint(params: Params, data_version: str) -> str:
    """Identifies a training job: same params and data -> same checkpoint folder (resume)."""
    parts = {"data": data_version, "model": params.model, "train": params.train, "augment": params.augment,
             "split": params.split}
    raw = json.dumps(parts, default=lambda o: o.__dict__, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class Checkpoint:
    """Per-epoch training state: ``weights.safetensors``, ``best.safetensors``, ``state.pt`` and ``meta.json``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / "meta.json").is_file()

    def save(self, net: Any, best_state: dict[str, Any], opt: Any, sched: Any, meta: dict[str, Any]) -> None:
        import torch
        from safetensors.torch import save_file

        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(weights, str(tmp / "weights.safetensors"))
        save_file({k: v.cpu().contiguous() for k, v in best_state.items()}, str(tmp / "best.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "state.pt")
        write_json(tmp / "meta.json", meta)
        old = self.folder.with_name(self.folder.name + ".old")
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, net: Any, opt: Any, sched: Any, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch
        from safetensors.torch import load_file

        net.load_state_dict(load_file(str(self.folder / "weights.safetensors"), device=device))
        best = load_file(str(self.folder / "best.safetensors"), device=device)
        state = torch.load(self.folder / "state.pt", map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        return best, read_json(self.folder / "meta.json", "checkpoint meta")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    import mlflow
    import torch
    from torch.utils.data import DataLoader, Dataset
    from tqdm import tqdm

    from mmretrieval.evaluate import score
    from mmretrieval.models.dual_encoder import ModelConfig, RetrievalModel, build, pick_device, train_transform
    from mmretrieval.models.losses import symmetric_info_nce, triplet_hardest
    from mmretrieval.models.towers import TextEncoder

    settings = settings or get_settings()
    params = settings.params_for(dataset)
    p, mp = params.train, params.model
    if p.loss not in LOSSES:
        raise ConfigError(f"train.loss {p.loss!r} is not one of {list(LOSSES)}")
    if p.epochs < 1 or p.batch_size < 2:
        raise ConfigError(f"train.epochs ({p.epochs}) must be >= 1 and train.batch_size ({p.batch_size}) >= 2")
    started = time.monotonic()
    aug_dir, clean_dir = settings.stage_dir("augmented", dataset), settings.stage_dir("clean", dataset)
    train_frame = read_parquet(aug_dir / "manifest.parquet", f"augmented training split of {dataset!r}")
    policy = read_json(aug_dir / "policy.json", "augmentation policy")
    clean = read_parquet(clean_dir / "manifest.parquet", f"clean manifest of {dataset!r}")
    val_frame = clean[clean["split"] == Split.VAL.value]
    ids, modalities, media, caps, labels = _items(train_frame)
    if len(ids) < 2:
        raise TrainingError(f"the train split of {dataset!r} has {len(ids)} image/audio item(s) with captions or "
                            "labels; need at least 2 (check split ratios and the quarantine)")
    present = sorted(set(modalities))
    data_version = str(policy["data_version"])

    torch.manual_seed(p.seed)
    np.random.seed(p.seed)
    device = pick_device(settings.device)
    text = TextEncoder(mp.text_model, device=device, trainable_layers=mp.text_trainable_layers)
    with_images = Modality.IMAGE.value in present
    config = ModelConfig(
        text_model=mp.text_model, text_dim=text.dim, embed_dim=mp.embed_dim, init_temperature=mp.init_temperature,
        image_backbone=mp.image_backbone if with_images else "", image_size=mp.image_size,
        text_trainable_layers=mp.text_trainable_layers,
        image_trainable_layers=mp.image_trainable_layers if with_images else 0,
        audio_tower=mp.audio_tower if Modality.AUDIO.value in present else "",
        audio_sample_rate=mp.audio_sample_rate, audio_seconds=mp.audio_seconds, n_mels=mp.n_mels,
        audio_norm=mp.audio_norm)
    net = build(config, mp.image_weights, text=text, device=device).to(device)
    config = net.config  # an "st:" image backbone brings its own image size and normalisation
    if config.audio_tower:
        net.audio_backbone.frontend.masks = audio_aug_masks(policy)  # SpecAugment, active in training mode only

    vocab = sorted({c for cs in caps for c in cs})
    cap_index = {c: i for i, c in enumerate(vocab)}
    text_feats = text.encode(vocab).to(device) if text.frozen else None  # (V, text_dim), frozen tower: once

    def caption_features(cap_t: torch.Tensor) -> torch.Tensor:
        """(B,) caption indices -> (B, text_dim): cached when frozen, else a forward pass through the tuned tower."""
        if text_feats is not None:
            return text_feats[cap_t]
        return text.forward([vocab[j] for j in cap_t.tolist()])

    label_index = {lab: k for k, lab in enumerate(sorted(set(labels) - {""}))}
    label_ids = torch.tensor([label_index.get(lab, -1) for lab in labels], device=device)  # -1: no label
    transform = train_transform(config, policy.get("image", {}))
    audio_aug = policy.get("audio", {})
    audio_len = int(config.audio_sample_rate * config.audio_seconds)

    class Media(Dataset):  # type: ignore[type-arg]
        """Items of one modality; decoded once, augmented every time they are drawn."""

        def __init__(self, members: list[int]) -> None:
            self.members = members
            self.cache: dict[int, Any] = {}

        def __len__(self) -> int:
            return len(self.members)

        def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
            from mmretrieval.media import open_image
            from mmretrieval.models.audio import augment_wave, change_speed, fit_length, load_audio

            i = self.members[k]
            if modalities[i] == Modality.IMAGE.value:
                if i not in self.cache:
                    self.cache[i] = open_image(clean_dir / media[i])
                return transform(self.cache[i]), i
            if i not in self.cache:
                self.cache[i] = load_audio(clean_dir / media[i], config.audio_sample_rate, config.audio_seconds * 4)
            wave = self.cache[i]
            rng = np.random.default_rng((p.seed, i, int(torch.randint(0, 2**31, (1,)).item())))
            if audio_aug:
                wave = change_speed(wave, 1 + rng.uniform(-1, 1) * audio_aug.get("speed", 0.0))
                offset = int(rng.integers(0, max(1, len(wave) - audio_len + 1)))
                wave = augment_wave(wave[offset:offset + audio_len], rng, audio_aug["gain_db"], audio_aug["snr_db"],
                                    audio_aug["shift"])
            return torch.from_numpy(np.ascontiguousarray(fit_length(wave, audio_len))), i

    gen = torch.Generator()
    label_count = {lab: labels.count(lab) for lab in label_index}
    loaders = {}
    for modality in present:
        members = [i for i, m in enumerate(modalities) if m == modality]
        # every label class weighs as much as one unlabelled item, so a few captioned photos are not drowned
        # by thousands of class-labelled items (and classes are balanced among themselves)
        weights = [1.0 / label_count[labels[i]] if labels[i] else 1.0 for i in members]
        if p.balance_labels and len(set(weights)) > 1:
            sampler: Any = torch.utils.data.WeightedRandomSampler(weights, num_samples=len(members), generator=gen)
        else:  # already balanced: a permutation sees every item each epoch (drawing with replacement leaves ~37 %
            # of them out of each epoch)
            sampler = torch.utils.data.RandomSampler(range(len(members)), generator=gen)
        loaders[modality] = DataLoader(Media(members), batch_size=min(p.batch_size, len(members)), sampler=sampler,
                                       drop_last=len(members) > p.batch_size, num_workers=p.num_workers,
                                       persistent_workers=p.num_workers > 0)

    def batches() -> Any:
        """Round-robin over the modalities' loaders: each batch holds one modality."""
        iterators = {m: iter(dl) for m, dl in loaders.items()}
        while iterators:
            for m in list(iterators):
                try:
                    yield m, next(iterators[m])
                except StopIteration:
                    del iterators[m]

    opt = torch.optim.AdamW(param_groups(net, p.lr, p.tuned_lr), weight_decay=p.weight_decay)
    total = max(1, p.epochs * sum(len(dl) for dl in loaders.values()))
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))

    gate_metric = params.gate.metric
    select_on_val = len(val_frame) >= p.min_val_items
    if len(val_frame) and not select_on_val:
        log.info("train %s: %d validation items < train.min_val_items (%d): validation metrics are logged, the "
                 "epoch with the lowest training loss is kept", dataset, len(val_frame), p.min_val_items)
    ckpt = Checkpoint(settings.var_dir / "checkpoints" / dataset / fingerprint(params, data_version))
    best_key: tuple[float, float] | None = None
    best_epoch, best_val, stale, first_epoch = 0, -1.0, 0, 1
    best_state: dict[str, Any] = {}
    history: list[dict[str, float]] = []
    run_id = None
    if ckpt.exists():
        best_state, meta = ckpt.load(net, opt, sched, device)
        best_key, best_epoch, best_val = tuple(meta["best_key"]), meta["best_epoch"], meta["best_val"]
        stale, first_epoch, history, run_id = meta["stale"], meta["epoch"] + 1, meta["history"], meta["run_id"]
        log.info("train %s: resuming run %s after epoch %d from %s", dataset, run_id, meta["epoch"], ckpt.folder)
    tags = {"dataset": dataset, "data_version": data_version, "git_sha": tracking.git_sha(Path.cwd()),
            "stage": "train", "device": device, "fingerprint": ckpt.folder.name}

    with tracking.start_run(settings, dataset, run_name=f"train-{dataset}", tags=tags, run_id=run_id) as mlrun:
        if run_id is None:
            mlflow.log_params({k: str(v)[:500] for k, v in params.as_flat_dict().items()})
            mlflow.log_params({"train_items": len(ids), "val_items": int(len(val_frame)), "captions": len(vocab)})
            mlflow.log_dict(policy, "augmentation_policy.json")
        bar = tqdm(range(first_epoch, p.epochs + 1), desc=f"train {dataset}", unit="epoch", disable=None,
                   initial=first_epoch - 1, total=p.epochs)
        for epoch in bar:
            net.train()
            gen.manual_seed(p.seed * 100_003 + epoch)  # each epoch's order and captions depend only on (seed, epoch)
            rng = random.Random(p.seed * 100_003 + epoch)
            losses, seen, epoch_start = [], 0, time.monotonic()
            for modality, (batch, idx) in batches():
                cap_t = torch.tensor([cap_index[rng.choice(caps[i])] for i in idx.tolist()], device=device)
                lab = label_ids[idx.to(device)]
                positives = (cap_t[:, None] == cap_t[None, :]) | ((lab[:, None] == lab[None, :]) & (lab[:, None] >= 0))
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                    img = net.encode(modality, batch.to(device, non_blocking=True)).float()
                    txt = net.project_text(caption_features(cap_t)).float()
                loss = (symmetric_info_nce(img, txt, net.logit_scale, positives) if p.loss == "infonce"
                        else triplet_hardest(img, txt, positives, p.margin))
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at epoch {epoch}: lower train.lr "
                                        f"(now {p.lr}) or check the data; nothing was registered")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), p.grad_clip)
                opt.step()
                sched.step()
                losses.append(float(loss.item()))
                seen += len(idx)
            train_seconds = time.monotonic() - epoch_start
            record = {"loss": float(np.mean(losses)), "lr": float(sched.get_last_lr()[0]),
                      "temperature": float(1 / net.logit_scale.exp().item()),
                      "train_samples_per_s": seen / max(train_seconds, 1e-9)}
            if len(val_frame):
                try:
                    val = score(RetrievalModel(net, text, device), val_frame, clean_dir, "media",
                                index=params.index)
                    record |= {f"val_{k}": v for k, v in val.items() if "@" in k or "rank" in k}
                except TrainingError:
                    pass  # fewer than two usable validation items: select on loss
            history.append(record)
            mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in record.items()}, step=epoch)
            resolved = resolve_metric(gate_metric, {k.removeprefix("val_"): v for k, v in record.items()})
            val_value = record.get(f"val_{resolved}") if resolved else None
            val_metric = val_value if select_on_val else None  # what selection and early stopping use
            key = selection_key(val_metric, record["loss"])
            if best_key is None or key > best_key:
                best_key, best_epoch = key, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if val_metric is not None and val_metric > best_val + 1e-9:
                best_val, stale = val_metric, 0
            else:
                stale += 1
            ckpt.save(net, best_state, opt, sched, {
                "epoch": epoch, "best_key": list(best_key), "best_epoch": best_epoch, "best_val": best_val,
                "stale": stale, "history": history, "run_id": mlrun.info.run_id})
            log.info("train %s epoch %d/%d: loss %.4f, val %s %s", dataset, epoch, p.epochs, record["loss"],
                     gate_metric, f"{val_value:.4f}" if val_value is not None else "n/a")
            bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{val_value if val_value is not None else -1:.3f}")
            if p.patience and val_metric is not None and stale >= p.patience:
                log.info("train %s: early stop after epoch %d (no better val %s for %d epochs)", dataset, epoch,
                         gate_metric, stale)
                break
        net.load_state_dict(best_state)
        mlflow.log_metrics({"best_epoch": best_epoch, "epochs_run": len(history),
                            "train_seconds": time.monotonic() - started})
        with tempfile.TemporaryDirectory() as tmp:
            RetrievalModel(net, text, device).save(Path(tmp))
            mlflow.log_artifacts(tmp, artifact_path=tracking.MODEL_ARTIFACT)
        run_id = mlrun.info.run_id
    ref = tracking.register(settings, dataset, run_id)
    tracking.tag_version(settings, ref, {"data_version": data_version, "git_sha": tags["git_sha"]})
    tracking.set_alias(settings, dataset, tracking.CHALLENGER, ref.version)
    ckpt.remove()
    final = history[best_epoch - 1]
    log.info("train %s: registered %s v%s (best epoch %d of %d)", dataset, ref.name, ref.version, best_epoch,
             len(history))
    return {"dataset": dataset, "data_version": data_version, "run_id": run_id, "model": ref.name,
            "model_version": ref.version, "best_epoch": best_epoch, "epochs_run": len(history),
            "metrics": {k: round(v, 4) for k, v in final.items()}, "seconds": round(time.monotonic() - started, 1)}
