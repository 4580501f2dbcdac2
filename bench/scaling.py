"""How embedding and publishing time grow with corpus size, and ANN recall@10 at the configured index parameters.

    .venv/bin/python bench/scaling.py --embed-sizes 1000 4000 --publish-sizes 10000 30000 100000

* embed: the pipeline's encode path (``embed.encode_rows``: data-loader decode + preprocess + image tower forward)
  over N synthetic PNG photos (random shapes, 96x96) with an untrained model of the configured architecture (speed
  does not depend on the weights); items/s per size and the ratio to the raw forward on ready tensors (1,000 items,
  same batch size, same run).
* publish: N synthetic unit vectors (``model.embed_dim``-d, drawn around 1,000 cluster centres so neighbourhoods are
  not trivial) through the real publish steps on a fresh Milvus Lite file (or ``--uri``): create + insert, index +
  load, verify (count, ANN recall@10 vs exact on 200 sampled queries, smoke query); seconds per step and vectors/s.
Everything in one process and one run, so the sizes are comparable.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        im = Image.new("RGB", (96, 96), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x, y = rng.integers(0, 80, 2)
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((int(x), int(y), int(x) + 24, int(y) + 24), fill=colour)
        path = folder / f"p{i:06d}.png"
        im.save(path)
        paths.append(path)
    return paths


def bench_embed(sizes: list[int], work: Path) -> list[dict[str, float]]:
    import pandas as pd

    from mmretrieval.core.settings import get_settings
    from mmretrieval.models.dual_encoder import ModelConfig, RetrievalModel, build
    from mmretrieval.models.towers import TextEncoder
    from mmretrieval.stages.embed import encode_rows

    s = get_settings(work)
    mp = s.params.model
    text = TextEncoder(mp.text_model)
    config = ModelConfig(text_model=mp.text_model, text_dim=text.dim, image_backbone=mp.image_backbone,
                         image_size=mp.image_size, embed_dim=mp.embed_dim or 384)
    model = RetrievalModel(build(config), text)
    photos = synthetic_photos(work / "photos", max(sizes))
    import torch

    from mmretrieval.media.image import open_image

    bs = s.params.embed.batch_size
    sample = [model.transform(open_image(p)) for p in photos[:1000]]
    batches = [torch.stack(sample[i:i + bs]) for i in range(0, len(sample), bs)]
    model.encode_pixels(batches[0])  # warm-up
    t = time.perf_counter()
    for b in batches:
        model.encode_pixels(b)
    raw = len(sample) / (time.perf_counter() - t)
    print(json.dumps({"raw_forward_items_per_s": round(raw, 1)}), flush=True)
    out = []
    for n in sizes:
        part = pd.DataFrame({"id": [p.stem for p in photos[:n]], "modality": "image", "text": "",
                             "media": [p.name for p in photos[:n]]})
        t = time.perf_counter()
        encode_rows(part, work / "photos", model, s.params.embed, desc=f"embed {n}")
        sec = time.perf_counter() - t
        out.append({"items": n, "seconds": round(sec, 2), "items_per_s": round(n / sec, 1),
                    "ratio_to_raw_forward": round(n / sec / raw, 3)})
        print(json.dumps({"embed": out[-1]}), flush=True)
    return out


def clustered_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    v = centres[rng.integers(0, 1000, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def bench_publish(sizes: list[int], uri: str, dim: int) -> list[dict[str, float]]:
    from mmretrieval.backends.index import MilvusIndex
    from mmretrieval.core.settings import get_settings
    from mmretrieval.core.shards import Block
    from mmretrieval.stages.publish import verify

    params = get_settings().params.index
    out = []
    with MilvusIndex(uri) as ix:
        for n in sizes:
            vectors = clustered_vectors(n, dim)
            ids = [f"v{i}" for i in range(n)]
            rows = [{"id": i, "modality": "image", "vector": v.tolist(), "text": "", "path": "", "label": "",
                     "metadata": {}, "model_version": "0", "data_version": "0"}
                    for i, v in zip(ids, vectors, strict=True)]
            name = f"bench_scale_{n}"
            if ix.exists(name):
                ix.drop(name)
            t0 = time.perf_counter()
            ix.create(name, dim, {})
            for _ in ix.insert(name, rows):
                pass
            t1 = time.perf_counter()
            ix.build_index(name, params)
            ix.load(name)
            t2 = time.perf_counter()
            block = Block("", ids, np.full(n, "image", dtype=object), vectors, None)
            checks = verify(ix, name, n, lambda b=block: [b], params)
            t3 = time.perf_counter()
            ix.drop(name)
            out.append({"vectors": n, "insert_s": round(t1 - t0, 2), "index_load_s": round(t2 - t1, 2),
                        "verify_s": round(t3 - t2, 2), "total_s": round(t3 - t0, 2),
                        "vectors_per_s": round(n / (t3 - t0), 1), "ann_recall@10": checks["ann_recall@10"]})
            print(json.dumps({"publish": out[-1]}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embed-sizes", type=int, nargs="*", default=[1000, 4000])
    ap.add_argument("--publish-sizes", type=int, nargs="*", default=[10000, 30000, 100000])
    ap.add_argument("--uri", help="Milvus URI (default: a fresh Milvus Lite file in a temporary folder)")
    args = ap.parse_args()
    from mmretrieval.core.settings import get_settings

    dim = get_settings().params.model.embed_dim or 384  # 0: the text model's (MiniLM)
    with tempfile.TemporaryDirectory(prefix="mmr-scale-") as tmp:
        work = Path(tmp)
        result = {"embed": bench_embed(args.embed_sizes, work) if args.embed_sizes else [],
                  "publish": bench_publish(args.publish_sizes, args.uri or str(work / "milvus.db"), dim)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
