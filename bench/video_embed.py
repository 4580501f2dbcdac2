"""Video embedding throughput: clips/s of the pipeline's encode path at K frames by seeking.

    .venv/bin/python bench/video_embed.py --clips 24 --seconds 10 --width 640 --height 480 --frames 8

Writes N generated H.264 MP4 clips (``--seconds`` long, ``--fps``, keyframe every ``--gop`` frames; moving shapes
over a gradient, so the encoder does real work) and runs them through ``embed.encode_rows`` (data-loader decode by
seeking + preprocess, then the image tower on K frames per clip and the temporal module) with an untrained model of
the configured architecture (speed does not depend on the weights). Reports clips/s, and apart: the seconds spent
decoding K frames per clip alone (``video.read_frames``) and the tower's forward on ready tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

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
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from mmretrieval.config import get_settings
    from mmretrieval.embed import encode_rows
    from mmretrieval.models.dual_encoder import ModelConfig, RetrievalModel, build
    from mmretrieval.models.efficientnet import preprocessing
    from mmretrieval.models.towers import TextEncoder
    from mmretrieval.video import read_frames, write_clip

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
    model = RetrievalModel(build(config), text)
    part = pd.DataFrame({"id": [p.stem for p in paths], "modality": "video", "text": "",
                         "media": [p.name for p in paths]})
    encode_rows(part.head(2), clips, model, s.params.embed)  # warm-up
    started = time.monotonic()
    frames: dict[int, tuple[list[float], np.ndarray]] = {}
    encode_rows(part, clips, model, s.params.embed, frames=frames)
    total = time.monotonic() - started
    started = time.monotonic()
    for p in paths:
        read_frames(p, args.frames, short_side=int(model.config.image_size / model.config.image_crop_pct))
    decode = time.monotonic() - started
    pixels = torch.randn(max(1, s.params.embed.batch_size // args.frames), args.frames, 3, model.config.image_size,
                         model.config.image_size)
    started = time.monotonic()
    reps = 3
    for _ in range(reps):
        model.encode_video_pixels(pixels)
    forward = (time.monotonic() - started) / (reps * len(pixels))
    print(json.dumps({
        "clips": args.clips, "seconds_per_clip": args.seconds, "size": f"{args.width}x{args.height}", "fps": args.fps,
        "gop": args.gop, "K": args.frames, "pool": args.pool, "backbone": mp.image_backbone,
        "embed.num_workers": s.params.embed.num_workers, "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "clips_per_s": round(args.clips / total, 2), "decode_only_clips_per_s": round(args.clips / decode, 2),
        "forward_only_clips_per_s": round(1 / forward, 2), "frames_per_clip_returned": len(frames[0][0]),
    }, indent=2))


if __name__ == "__main__":
    main()
