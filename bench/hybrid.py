"""Hybrid keyword + vector search on a catalogue-like split (issue 27): vector, keyword (BM25) and hybrid side by side.

    nice /work/main/.venv/bin/python bench/hybrid_features.py ../shared/data/flickr8k_dev --out var/hybrid-features.npz
    nice /work/main/.venv/bin/python bench/hybrid.py --features var/hybrid-features.npz

Catalogue: the test photos of a hash split (``--salt mmr``: E4, 340 train / 301 test photos of flickr8k_dev); each
item carries ONE of its five captions (picked by ``--caption-seed``) as its text, what the keyword field indexes; the
other four captions are the queries (1,204 on E4), each relevant to its photo only. The vector side is the issue's
linear probe (frozen Lite0 pooled features -> MiniLM space, trained on the split's train photos: a random mirrored
copy per photo each epoch, one random caption of five, 20 % feature dropout, symmetric InfoNCE with a learnable
temperature from 0.07, AdamW lr 1e-3 and weight decay 0.01, batch 128, 20 epochs), averaged over ``--seeds``
probe seeds. Everything searches through the product's code on Milvus Lite
(:class:`~mmretrieval.backends.index.MilvusIndex` with its BM25 keyword field, :func:`mmretrieval.serving.hybrid.
search_ids`); fusion settings are tuned on another split (``--tune-salt``) and only then scored on ``--salt``.

Also measured: the same catalogue with half of its items stripped of text (as in a collection where some photos
have no caption), to check that hybrid search still finds items by vector alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

K = 100  # ranked ids fetched per query (MRR over them)


def split_of(ids: np.ndarray, salt: str) -> np.ndarray:
    """True for the test photos of the 0.5 / 0 / 0.5 hash split with ``salt`` (the pipeline's own assignment)."""
    from mmretrieval.core.params import SplitParams
    from mmretrieval.core.schema import assign_split

    ratios = SplitParams(train=0.5, val=0.0, test=0.5, salt=salt)
    return np.array([assign_split(str(i), ratios) == "test" for i in ids])


def train_probe(images: np.ndarray, texts: np.ndarray, seed: int, epochs: int = 20
                ) -> tuple[np.ndarray, np.ndarray]:
    """The issue's linear probe: (N, 2, F) features (plain, mirrored), (N, 5, D) caption vectors -> (F, D)
    weights and (D,) bias."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(images).float()
    t = F.normalize(torch.from_numpy(texts).float(), dim=-1)
    head = torch.nn.Linear(x.shape[-1], t.shape[-1])
    log_temp = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    opt = torch.optim.AdamW([*head.parameters(), log_temp], lr=1e-3, weight_decay=0.01)
    n = len(x)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, 128):
            idx = order[start:start + 128]
            view = x[idx, rng.integers(0, 2, len(idx))]
            cap = t[idx, rng.integers(0, 5, len(idx))]
            v = F.normalize(head(F.dropout(view, 0.2, training=True)), dim=-1)
            logits = log_temp.exp().clamp(max=100) * v @ cap.T
            labels = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        return head.weight.T.numpy().copy(), head.bias.numpy().copy()


def catalogue(data: dict, test: np.ndarray, caption_seed: int, without_text: float = 0.0) -> dict:
    """Items (test photos, one caption each, a share ``without_text`` of them none) and queries (the other four)."""
    rng = np.random.default_rng(caption_seed)
    ids = data["ids"][test]
    caps = data["captions"][test]
    kept = rng.integers(0, 5, len(ids))
    bare = set(rng.choice(len(ids), int(round(without_text * len(ids))), replace=False).tolist())
    items = [{"id": str(i), "text": "" if j in bare else str(caps[j][kept[j]])} for j, i in enumerate(ids)]
    queries, relevant, vectors, has_text = [], [], [], []
    texts = data["texts"][test]
    for j, i in enumerate(ids):
        for c in range(5):
            if c != kept[j]:
                queries.append(str(caps[j][c]))
                relevant.append(str(i))
                vectors.append(texts[j, c])
                has_text.append(j not in bare)
    q = np.stack(vectors)
    return {"items": items, "queries": queries, "relevant": relevant, "has_text": np.array(has_text),
            "query_vectors": q / np.linalg.norm(q, axis=1, keepdims=True)}


def metrics(ranked: list[list[str]], relevant: list[str], mask: np.ndarray | None = None) -> dict[str, float]:
    """R@1, R@10 (percent) and MRR over the first :data:`K` of each ranking (one relevant item per query)."""
    ranks = np.array([r.index(rel) + 1 if rel in r else 0 for r, rel in zip(ranked, relevant, strict=True)])
    if mask is not None:
        ranks = ranks[mask]
    found = ranks > 0
    return {"R@1": 100 * float(np.mean(found & (ranks == 1))), "R@10": 100 * float(np.mean(found & (ranks <= 10))),
            "MRR": float(np.mean(np.where(found, 1.0 / np.maximum(ranks, 1), 0.0)))}


class Bench:
    """One Milvus Lite collection per (catalogue, probe) and the product's search modes over it."""

    def __init__(self, folder: Path) -> None:
        from mmretrieval.backends.index import MilvusIndex

        self.ix = MilvusIndex(str(folder / "milvus.db"))
        self.count = 0

    def publish(self, cat: dict, image_vectors: np.ndarray) -> str:
        """A collection of the catalogue's items: image vectors and their one caption as keyword text."""
        from mmretrieval.backends.index import keyword_text
        from mmretrieval.core.params import IndexParams

        self.count += 1
        name = f"hybrid_{self.count}"
        self.ix.create(name, image_vectors.shape[1], {})
        rows = [{"id": it["id"], "modality": "image", "vector": v.tolist(), "text": it["text"], "path": "",
                 "label": "", "metadata": {}, "model_version": "1", "data_version": "bench",
                 "keywords": keyword_text(it["text"], "", {}, ("text",))}
                for it, v in zip(cat["items"], image_vectors, strict=True)]
        list(self.ix.insert(name, rows))
        self.ix.build_index(name, IndexParams())
        self.ix.load(name)
        return name

    def lists(self, name: str, cat: dict) -> tuple[list, list]:
        """The vector and keyword result lists (:data:`K` deep) of every query, searched once per collection."""
        from mmretrieval.backends.index import KEYWORDS
        from mmretrieval.core.params import IndexParams
        from mmretrieval.serving.hybrid import search_rows

        params = IndexParams()
        near = search_rows(self.ix, name, params, "vector", cat["query_vectors"], None, K,
                           output_fields=["id", KEYWORDS])
        words = search_rows(self.ix, name, params, "keyword", None, cat["queries"], K, output_fields=["id"])
        return near, words

    def check_hybrid(self, name: str, cat: dict, fused: list[list[str]]) -> None:
        """The product's hybrid search (:func:`~mmretrieval.serving.hybrid.search_ids`, default fusion) ranks as
        the fusion of the lists here does (a sample of queries, it searches again)."""
        from mmretrieval.core.params import IndexParams
        from mmretrieval.serving.hybrid import search_ids

        ids = search_ids(self.ix, name, IndexParams(), "hybrid", cat["query_vectors"][:50], cat["queries"][:50], K)
        if ids != fused[:50]:
            raise SystemExit("search_ids(hybrid) differs from fusing the two lists")


def fused_ids(near: list, words: list, fusion: dict | None) -> list[list[str]]:
    """Each query's two lists fused as ``fusion`` (``index.hybrid`` keys) says: what hybrid search returns."""
    from mmretrieval.core.params import HybridParams
    from mmretrieval.serving.hybrid import fuse, textless_ids

    params = HybridParams(**(fusion or {}))
    return [[str(h["id"]) for h in fuse(v, w, params, K, textless_ids(v))] for v, w in zip(near, words, strict=True)]


FUSIONS = ([{"fusion": "rrf", "rrf_k": k, "vector_weight": w} for k in (10, 30, 60, 100) for w in (0.5, 1.0, 1.5, 2.0)]
           + [{"fusion": "weighted", "vector_weight": w} for w in (0.5, 1.0, 1.5, 2.0, 3.0)])


def run_split(bench: Bench, data: dict, salt: str, seeds: list[int], caption_seed: int, fusions: list[dict],
              without_text: float = 0.0) -> dict[str, list[dict]]:
    """Per mode (and fusion setting), the metrics of each probe seed on the split with ``salt``."""
    test = split_of(data["ids"], salt)
    cat = catalogue(data, test, caption_seed, without_text)
    out: dict[str, list[dict]] = {}
    for seed in seeds:
        w, b = train_probe(data["images"][~test], data["texts"][~test], seed)
        vec = data["images"][test, 0] @ w + b
        name = bench.publish(cat, vec / np.linalg.norm(vec, axis=1, keepdims=True))
        near, words = bench.lists(name, cat)
        bench.check_hybrid(name, cat, fused_ids(near, words, None))
        runs = [("vector", None), ("keyword", None)] + [("hybrid", f) for f in fusions]
        for mode, fusion in runs:
            label = mode if fusion is None else "hybrid " + json.dumps(fusion, sort_keys=True)
            ranked = fused_ids(near, words, fusion) if mode == "hybrid" else [
                [str(h["id"]) for h in hits] for hits in (near if mode == "vector" else words)]
            m = metrics(ranked, cat["relevant"])
            if without_text:
                m |= {f"{key} (no text)": v for key, v in
                      metrics(ranked, cat["relevant"], ~cat["has_text"]).items()}
            out.setdefault(label, []).append(m)
    return out


def mean(runs: list[dict]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, default=Path("var/hybrid-features.npz"))
    ap.add_argument("--salt", default="mmr", help="the split reported (mmr: E4)")
    ap.add_argument("--tune-salt", default="mmr1", help="the split the fusion settings are chosen on")
    ap.add_argument("--seeds", type=int, default=3, help="probe seeds averaged")
    ap.add_argument("--caption-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = dict(np.load(args.features, allow_pickle=False))
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory(prefix="mmr-hybrid-") as tmp:
        bench = Bench(Path(tmp))
        tuned = {k: mean(v) for k, v in run_split(bench, data, args.tune_salt, seeds, args.caption_seed + 1,
                                                   FUSIONS).items()}
        best_rrf = max((k for k in tuned if '"rrf"' in k), key=lambda k: tuned[k]["R@10"])
        best_weighted = max((k for k in tuned if '"weighted"' in k), key=lambda k: tuned[k]["R@10"])
        chosen = [json.loads(k.removeprefix("hybrid ")) for k in (best_rrf, best_weighted)]
        default = {"fusion": "rrf", "rrf_k": 60, "vector_weight": 1.0}
        reported = [default] + [c for c in chosen if c != default]
        report = {k: mean(v) for k, v in run_split(bench, data, args.salt, seeds, args.caption_seed,
                                                    reported).items()}
        half = {k: mean(v) for k, v in run_split(bench, data, args.salt, seeds, args.caption_seed, reported,
                                                  without_text=0.5).items()}
        bench.ix.close()
    print(json.dumps({"tuning split": args.tune_salt, "tuning (R@10)": {k: round(v["R@10"], 1)
                                                                       for k, v in tuned.items()},
                      "chosen": chosen, "reported split": args.salt, "report": report,
                      "half the items without text": half}, indent=1))
    for title, table in (("catalogue", report), ("half the items without text", half)):
        print(f"\n{title} ({args.salt}, {args.seeds} probe seeds)")
        for label, m in table.items():
            print(f"| {label} | " + " | ".join(f"{v:.3f}" if "MRR" in key else f"{v:.1f}" for key, v in m.items())
                  + " |")


if __name__ == "__main__":
    main()
