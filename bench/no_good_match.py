"""How well ``no_good_match`` tells unanswerable queries from answerable ones, through the serving client.

    MMR_HOME=/tmp/ws .venv/bin/python bench/no_good_match.py --dataset flickr \
        [--no-answer bench/data/no_answer_queries.txt] [--min-confidence 0.03] [--alternatives]

Needs a workspace whose dataset is evaluated (so its model version carries a score calibration), promoted, embedded
and published (e.g. after ``bench/train_quality.py ... --workspace DIR``: ``mmr promote``, ``mmr embed``,
``mmr publish``). Searches, with :class:`~mmretrieval.RetrievalClient` as serving does (top 10):

* the no-answer queries (one a line, ``#`` comments name the category of the lines below them);
* the in-domain queries: every caption of the dataset's test-split items (unseen by training), whose relevant item is
  the item it describes.

Prints, at the threshold (the dataset's ``calibration.min_confidence`` unless given): the share of no-answer queries
flagged, the share of in-domain queries whose relevant item is in the top 10 that are not flagged (issue 27's goal:
>= 90 % and >= 95 %), per category, the ROC AUC of the best confidence, and the threshold range that meets the goal.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def read_queries(path: Path) -> list[tuple[str, str]]:
    """(category, query) per line; a ``# …`` line starts a category (its first words)."""
    category, out = "other", []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            category = line.lstrip("# ").split("(")[0].split(":")[-1].strip() or category
        elif line.strip():
            out.append((category, line.strip()))
    return out


def in_domain(dataset: str) -> list[tuple[str, str]]:
    """(item id, caption) of every caption of the test-split items."""
    from mmretrieval.core.layout import read_clean
    from mmretrieval.core.schema import Split, captions_of
    from mmretrieval.core.settings import get_settings

    frame = read_clean(get_settings().layout(dataset)).frame
    test = frame[frame["split"] == Split.TEST.value]
    return [(row["id"], c) for _, row in test.iterrows() for c in captions_of(row)]


def best(client, text: str) -> tuple[float | None, float, list[str]]:
    hits = client.search(text, k=10)
    known = [h.confidence for h in hits if h.confidence is not None]
    return (max(known) if known else None), hits[0].score, [h.id for h in hits]


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random ``pos`` value > a random ``neg`` value), ties counting half."""
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def alternatives(dataset: str, none: list[str], some: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Other scores a calibration could map, computed offline from the champion's embeddings (exact search over
    every embedded item): per score, its ROC AUC (answerable vs no-answer) and the share of no-answer queries
    flagged at the cut that keeps 95 % of answerable queries."""
    import pandas as pd

    from mmretrieval.backends import tracking
    from mmretrieval.core.settings import get_settings
    from mmretrieval.serving import loading

    settings = get_settings()
    ref = tracking.require_alias(settings, dataset, tracking.CHAMPION)
    model = loading.load_model(settings, ref, "cpu")
    folder = settings.layout(dataset).embeddings(ref.version)
    emb = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    vectors = np.stack(emb["vector"].to_numpy()).astype(np.float32)
    mean = vectors.mean(axis=0)

    def scores(texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        q = model.encode_texts(texts)
        sim = q @ vectors.T
        top = -np.sort(-sim, axis=1)
        return {"top-1 cosine": top[:, 0], "top-1 minus the query's mean score": top[:, 0] - sim.mean(axis=1),
                "top-1 minus query . corpus mean": top[:, 0] - q @ mean,
                "z-score of top-1": (top[:, 0] - sim.mean(axis=1)) / sim.std(axis=1),
                "top-1 minus mean of top 10": top[:, 0] - top[:, :10].mean(axis=1)}, sim

    neg, _ = scores(none)
    pos, sim = scores([q for _, q in some])
    row = {i: j for j, i in enumerate(emb["id"])}
    ok = np.array([row[item] in np.argsort(-sim[j])[:10] for j, (item, _) in enumerate(some)])
    out = {}
    for name in neg:
        cut = float(np.quantile(pos[name][ok], 0.05, method="lower"))
        out[name] = {"auc": round(auc(pos[name][ok], neg[name]), 4),
                     "flagged_at_95pct_kept": round(float(np.mean(neg[name] < cut)), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="flickr")
    ap.add_argument("--no-answer", type=Path, default=HERE / "data" / "no_answer_queries.txt")
    ap.add_argument("--min-confidence", type=float, help="threshold (default: the dataset's params)")
    ap.add_argument("--alternatives", action="store_true", help="also score other no-match signals offline")
    args = ap.parse_args()

    from mmretrieval import RetrievalClient

    started = time.monotonic()
    with RetrievalClient(args.dataset) as client:
        threshold = client._min_confidence(args.min_confidence)
        none = [(cat, q, *best(client, q)) for cat, q in read_queries(args.no_answer)]
        some = [(item, q, *best(client, q)) for item, q in in_domain(args.dataset)]
    if any(r[2] is None for r in none + some):
        raise SystemExit("the serving collection has no calibration: evaluate, then embed and publish again")
    answerable = [r for r in some if r[0] in r[4]]  # the relevant item is in the top 10
    conf_none = np.array([r[2] for r in none])
    conf_ok = np.array([r[2] for r in answerable])
    flagged = {cat: float(np.mean([r[2] < threshold for r in none if r[0] == cat])) for cat, *_ in none}
    # the thresholds that keep >= 95 % of answerable queries unflagged, and what each flags
    keep95 = float(np.quantile(conf_ok, 0.05, method="lower"))
    out = {
        "dataset": args.dataset, "min_confidence": threshold,
        "no_answer_queries": len(none), "in_domain_queries": len(some), "answerable_in_top10": len(answerable),
        "no_answer_flagged": round(float(np.mean(conf_none < threshold)), 4),
        "answerable_not_flagged": round(float(np.mean(conf_ok >= threshold)), 4),
        "all_in_domain_not_flagged": round(float(np.mean([r[2] >= threshold for r in some])), 4),
        "no_answer_flagged_by_category": {k: round(v, 4) for k, v in flagged.items()},
        "auc_best_confidence": round(auc(conf_ok, conf_none), 4),
        "auc_top1_score": round(auc(np.array([r[3] for r in answerable]), np.array([r[3] for r in none])), 4),
        "threshold_keeping_95pct": keep95,
        "no_answer_flagged_at_it": round(float(np.mean(conf_none < keep95)), 4),
        "sweep": {f"{t:.3f}": [round(float(np.mean(conf_none < t)), 4), round(float(np.mean(conf_ok >= t)), 4)]
                  for t in (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.1)},  # [flagged, answerable kept]
        "unflagged_no_answer_examples": [r[1] for r in none if r[2] >= threshold][:10],
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.alternatives:
        out["alternatives"] = alternatives(args.dataset, [r[1] for r in none], [(r[0], r[1]) for r in some])
    print(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
