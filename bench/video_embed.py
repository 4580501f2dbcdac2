"""Video embedding throughput: clips/s of the pipeline's encode path at K frames by seeking, before and after.

    .venv/bin/python bench/video_embed.py --clips 24 --seconds 10 --width 640 --height 480 --frames 8 --rounds 2

Writes N generated H.264 MP4 clips (``--seconds`` long, ``--fps``, keyframe every ``--gop`` frames; moving shapes
over a gradient, so the encoder does real work) and embeds them with an untrained model of the configured
architecture (speed does not depend on the weights), several ways in one run, alternating over ``--rounds`` so that
the machine's load falls on all of them alike:

* ``before``: the path as it was: a data-loader worker decodes K frames per clip by seeking (frame threads, every
  frame decoded) into PIL images and preprocesses each with the image transform; the main process runs the image
  tower on the batch's B * K frames in one call, NCHW layout;
* ``after``: ``embed.encode_rows`` as it is now: slice threads, non-reference frames before each target dropped,
  frames scaled by the decoder's scaler straight into one array and preprocessed as one tensor; the tower in
  chunks of 16 frames, channels-last, under ``torch.inference_mode``;
* ``after, bf16``: the same with ``embed.precision: bf16`` (bfloat16 autocast on CPU).

Apart: decoding alone (seconds per clip for K frames, both ways), the tower alone per frame (both layouts and
bf16: the floor), and the cosine between the fp32 and bf16 clip vectors. ``--threads`` sets torch's threads in the
main process for ``before`` and the tower-alone timings (``after`` uses ``embed.torch_threads``: 0, the cores the
decoding worker leaves; ``after, N torch threads`` sets all N cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def moving_shapes(seconds: float, fps: int, width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, int(rng.integers(0, 255)))],
                    axis=-1).astype(np.uint8)
    out = np.repeat(base[None], n, axis=0)
    for _ in range(3):
        x0, y0 = rng.integers(0, width - 80), rng.integers(0, height - 80)
        vx, vy = rng.integers(-6, 7, 2)
        colour = rng.integers(0, 255, 3).astype(np.uint8)
        for i in range(n):
            x = int(np.clip(x0 + vx * i, 0, width - 80))
            y = int(np.clip(y0 + vy * i, 0, height - 80))
            out[i, y:y + 80, x:x + 80] = colour
    return out


def legacy_clip(path: Path, model: Any) -> Any:
    """The clip as the embedding path loaded it before: PIL frames, the image transform one frame at a time."""
    import math

    import torch

    from mmretrieval.media import video
    c = model.config
    saved = video.DECODE_THREADS, video.SKIP_MARGIN_S
    video.DECODE_THREADS, video.SKIP_MARGIN_S = "AUTO", math.inf  # frame threads, every frame decoded: as before
    try:
        frames = video.read_frames(path, c.video_frames, short_side=int(c.image_size / c.image_crop_pct))
    finally:
        video.DECODE_THREADS, video.SKIP_MARGIN_S = saved
    return torch.stack([model.transform(im) for im in frames.images])


class LegacyReader:
    def __init__(self, paths: list[Path], model: Any) -> None:
        self.paths, self.model = paths, model

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> Any:
        return legacy_clip(self.paths[k], self.model)


def legacy_embed(paths: list[Path], model: Any, batch_size: int, workers: int) -> np.ndarray:
    """The embedding path as it was: one tower call on B * K frames in NCHW layout, then pooling and heads."""
    import torch
    from torch.utils.data import DataLoader

    tower = model.net.image_backbone.model
    tower.to(memory_format=torch.contiguous_format)
    out = []
    loader = DataLoader(LegacyReader(paths, model), batch_size=max(1, batch_size // model.config.video_frames),
                        num_workers=workers, prefetch_factor=4 if workers else None)
    with torch.no_grad():
        for pixels in loader:
            feats = model.net.frame_features(pixels)
            out.append(model.net.project_video(feats).numpy())
            model.net.project_image(feats.flatten(0, 1))
    tower.to(memory_format=torch.channels_last)
    return np.concatenate(out)


def tower_ms_per_frame(model: Any, frames: int, reps: int = 3) -> dict[str, float]:
    """The image tower alone on ready tensors, ms per frame: NCHW in one call on ``frames`` frames (before) vs the
    embedding path's channels-last chunks in fp32 and bf16, the three interleaved ``reps`` times (same load)."""
    import torch

    pixels = torch.randn(frames, 3, model.config.image_size, model.config.image_size)
    tower = model.net.image_backbone.model

    def nchw() -> None:
        tower.to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            started = time.perf_counter()
            model.net.image_features(pixels)
            spent["nchw_one_call"] += time.perf_counter() - started
        tower.to(memory_format=torch.channels_last)

    def chunks(precision: str) -> None:
        model.precision = precision
        started = time.perf_counter()
        model.image_features(pixels)
        spent[f"chunks_channels_last_{precision}"] += time.perf_counter() - started
        model.precision = "fp32"

    spent = {"nchw_one_call": 0.0, "chunks_channels_last_fp32": 0.0, "chunks_channels_last_bf16": 0.0}
    runs = [nchw, lambda: chunks("fp32"), lambda: chunks("bf16")]
    for run in runs:  # warm-up
        run()
    spent = dict.fromkeys(spent, 0.0)
    for _ in range(reps):
        for run in runs:
            run()
    return {k: round(v / (reps * frames) * 1000, 2) for k, v in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--gop", type=int, default=50, help="keyframe interval in frames (50 at 25 fps: every 2 s)")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=8, help="K")
    ap.add_argument("--pool", default="attention")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the main process (0: torch's default)")
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from mmretrieval.core.settings import get_settings
    from mmretrieval.media.video import write_clip
    from mmretrieval.models.dual_encoder import ModelConfig, RetrievalModel, build
    from mmretrieval.models.efficientnet import preprocessing
    from mmretrieval.models.towers import TextEncoder
    from mmretrieval.stages.embed import encode_rows

    work = args.work or Path(tempfile.mkdtemp(prefix="mmr-video-bench-"))
    clips = work / "clips"
    paths = []
    for i in range(args.clips):
        path = clips / f"c{i:04d}.mp4"
        if not path.is_file():
            write_clip(path, moving_shapes(args.seconds, args.fps, args.width, args.height, i), fps=args.fps,
                       gop=args.gop)
        paths.append(path)
    s = get_settings(work)
    mp = s.params.model
    text = TextEncoder(mp.text_model)
    pre = preprocessing(mp.image_backbone)
    config = ModelConfig(text_model=mp.text_model, text_dim=text.dim, image_backbone=mp.image_backbone,
                         image_size=pre.size, embed_dim=384, text_head="none", video_pool=args.pool,
                         video_frames=args.frames)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = RetrievalModel(build(config), text)
    part = pd.DataFrame({"id": [p.stem for p in paths], "modality": "video", "text": "",
                         "media": [p.name for p in paths]})
    ep = s.params.embed
    workers = min(ep.num_workers, max(0, len(paths) // max(1, ep.batch_size // args.frames)))

    def after(precision: str, threads: int = 0) -> np.ndarray:
        model.precision = precision
        try:
            return encode_rows(part, clips, model, ep.model_copy(update={"torch_threads": threads}), frames={})
        finally:
            model.precision = "fp32"

    ways = {"before": lambda: legacy_embed(paths, model, ep.batch_size, workers), "after": lambda: after("fp32"),
            f"after, {os.cpu_count()} torch threads": lambda: after("fp32", os.cpu_count() or 1),
            "after, bf16": lambda: after("bf16")}
    encode_rows(part.head(2), clips, model, ep)  # warm-up
    legacy_embed(paths[:2], model, ep.batch_size, 0)
    rates: dict[str, list[float]] = {k: [] for k in ways}
    vectors: dict[str, np.ndarray] = {}
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, run in ways.items():
            started = time.monotonic()
            vectors[name] = run()
            rates[name].append(round(args.clips / (time.monotonic() - started), 2))
        loads.append(os.getloadavg()[0])
    decode = {"before": 0.0, "after": 0.0}  # clip by clip, the two ways in turn (same load)
    for p in paths:
        for name, load in (("before", lambda p: legacy_clip(p, model)), ("after", model.load_clip)):
            started = time.process_time()  # CPU seconds of this process, decoder threads included
            load(p)
            decode[name] += time.process_time() - started
    decode = {k: round(v / len(paths) * 1000, 1) for k, v in decode.items()}
    tower = tower_ms_per_frame(model, max(1, ep.batch_size // args.frames) * args.frames)
    cosine = {k: round(float((vectors["before"] * vectors[k]).sum(axis=1).min()), 6) for k in ("after", "after, bf16")}
    best = {k: max(v) for k, v in rates.items()}
    print(json.dumps({
        "clips": args.clips, "seconds_per_clip": args.seconds, "size": f"{args.width}x{args.height}", "fps": args.fps,
        "gop": args.gop, "K": args.frames, "pool": args.pool, "backbone": mp.image_backbone,
        "embed.num_workers": ep.num_workers, "embed.batch_size": ep.batch_size, "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "load_average_1min_per_round": [round(v, 2) for v in loads],
        "clips_per_s_per_round": rates, "ratio_after_to_before": round(best["after"] / best["before"], 2),
        "ratio_bf16_to_before": round(best["after, bf16"] / best["before"], 2),
        "decode_and_preprocess_cpu_ms_per_clip": decode, "tower_ms_per_frame": tower,
        "tower_floor_clips_per_s": {k: round(1000 / (v * args.frames), 2) for k, v in tower.items()},
        "min_cosine_to_before": cosine,
    }, indent=2))


if __name__ == "__main__":
    main()
