"""Embedding, publishing and query overhead, each measured against the raw operation in the same run.

    MMR_HOME=<workspace with a published dataset> .venv/bin/python bench/serving.py --dataset demo

Prints JSON with:
* embed: pipeline items/s (``embed.run``: decode + preprocess + encode + write) vs raw model forward items/s on
  already-preprocessed tensors of the same items and batch size, and their ratio;
* publish: pipeline vectors/s (``publish.run``: create, insert, index, load, verify, swap) vs raw pymilvus insert +
  index + load of the same rows, and their ratio;
* query: end-to-end ``RetrievalClient.search`` p50/p99 vs encode + raw ``MilvusClient.search`` p50/p99, and the
  overhead in ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import numpy as np


def percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(samples) * 1000, q)), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()

    import pandas as pd
    import torch

    from mmretrieval.backends import tracking
    from mmretrieval.backends.index import MilvusIndex
    from mmretrieval.core.settings import get_settings
    from mmretrieval.media.image import open_image
    from mmretrieval.models.dual_encoder import pick_device
    from mmretrieval.serving import loading
    from mmretrieval.serving.client import RetrievalClient
    from mmretrieval.stages import embed, publish

    s = get_settings()
    ds = args.dataset
    ref = tracking.require_alias(s, ds, tracking.CHAMPION)
    model = loading.load_model(s, ref, pick_device(s.device))
    clean_dir = s.layout(ds).clean
    clean = pd.read_parquet(clean_dir / "manifest.parquet")
    images = clean[clean["modality"] == "image"]
    bs = s.params_for(ds).embed.batch_size

    # --- embed: pipeline vs raw forward --------------------------------------------------------------------
    shutil.rmtree(s.layout(ds).embeddings(ref.version), ignore_errors=True)
    t = time.perf_counter()
    summary = embed.run(ds, s)
    pipeline_s = time.perf_counter() - t
    tensors = [model.transform(open_image(clean_dir / m)) for m in images["media"]]
    batches = [torch.stack(tensors[i:i + bs]) for i in range(0, len(tensors), bs)]
    model.encode_pixels(batches[0])  # warm-up
    t = time.perf_counter()
    for b in batches:
        model.encode_pixels(b)
    raw_s = time.perf_counter() - t
    result: dict[str, object] = {"items": summary["rows"], "embed": {
        "pipeline_items_per_s": round(summary["rows"] / pipeline_s, 1),
        "raw_forward_items_per_s": round(len(tensors) / raw_s, 1),
        "ratio": round((summary["rows"] / pipeline_s) / (len(tensors) / raw_s), 3)}}

    # --- publish: pipeline vs raw insert + index + load ----------------------------------------------------
    params = s.params_for(ds).index
    emb = publish.Embeddings(s, publish.target(ds, s))
    vectors = np.concatenate([b.vectors for b in emb.blocks()])  # the raw insert below sends them all at once
    with MilvusIndex(s.milvus_uri) as ix:
        name = publish.collection_name(s.alias(ds), ref.version, summary["data_version"])
        if ix.resolve_alias(s.alias(ds)) == name:  # force a rebuild: point the alias away, drop the collection
            ix.drop_alias(s.alias(ds))
            ix.drop(name)
    t = time.perf_counter()
    publish.run(ds, s)
    pub_s = time.perf_counter() - t
    rows = [{"id": f"raw{i}", "modality": "image", "vector": v.tolist(), "text": "", "path": "", "label": "",
             "metadata": {}, "model_version": "0", "data_version": "0"} for i, v in enumerate(vectors)]
    with MilvusIndex(s.milvus_uri) as ix:
        raw_name = "bench_raw"
        if ix.exists(raw_name):
            ix.drop(raw_name)
        ix.create(raw_name, vectors.shape[1], {})
        t = time.perf_counter()
        ix.client.insert(raw_name, rows)
        ix.client.flush(raw_name)
        ix.build_index(raw_name, params)
        ix.client.load_collection(raw_name)
        raw_pub_s = time.perf_counter() - t
        ix.drop(raw_name)
    result["publish"] = {"pipeline_vectors_per_s": round(len(vectors) / pub_s, 1),
                         "raw_insert_index_vectors_per_s": round(len(vectors) / raw_pub_s, 1),
                         "ratio": round(raw_pub_s / pub_s, 3)}

    # --- query: end to end vs encode + raw search ----------------------------------------------------------
    texts = [t.split(" ||| ")[0] for t in clean["text"] if t][: args.queries] or ["a photo"]
    e2e, raw = [], []
    with RetrievalClient(ds, settings=s) as client:
        client.search(text=texts[0], k=10)  # warm-up: loads the model and the collection
        collection = client.index.require_alias(client.alias)
        for q in texts:
            t = time.perf_counter()
            client.search(text=q, k=10)
            e2e.append(time.perf_counter() - t)
            t = time.perf_counter()
            vec = model.encode_texts([q])[0]
            client.index.client.search(collection, data=[vec.tolist()], limit=10, output_fields=["id"],
                                       search_params={"metric_type": params.metric_type,
                                                      "params": dict(params.search_params)})
            raw.append(time.perf_counter() - t)
    result["query"] = {
        "queries": len(texts),
        "e2e_p50_ms": percentile_ms(e2e, 50), "e2e_p99_ms": percentile_ms(e2e, 99),
        "raw_p50_ms": percentile_ms(raw, 50), "raw_p99_ms": percentile_ms(raw, 99),
        "overhead_p50_ms": round(percentile_ms(e2e, 50) - percentile_ms(raw, 50), 2),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
