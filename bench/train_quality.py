"""Train and score a dataset end to end in a scratch workspace, printing quality and wall time.

    .venv/bin/python bench/train_quality.py ../shared/data/flickr8k_dev --name flickr \
        --params-yaml 'split: {train: 0.7, val: 0.1, test: 0.2}' --set train.epochs=30

Runs ingest -> validate -> clean -> augment -> train -> evaluate in a temporary MMR_HOME (real DVC, GX, MLflow),
prints the test metrics of the trained model, the gallery size, their chance levels and the training time. With
``--rerank`` the ``rerank`` stage follows (it needs ``--set rerank.enabled=true``) and its report is printed too:
dual encoder vs re-ranked top ``rerank.depth`` in both directions, the gate's interval, the latency per query.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def set_key(tree: dict, dotted: str, value: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = yaml.safe_load(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir", type=Path, help="folder with manifest.csv")
    ap.add_argument("--name", default="bench")
    ap.add_argument("--params-yaml", default="", help="YAML merged over the repo's params.yaml")
    ap.add_argument("--set", action="append", default=[], help="section.key=value (repeatable)")
    ap.add_argument("--workspace", type=Path, help="reuse this MMR_HOME (skips ingest/prep when present)")
    ap.add_argument("--rerank", action="store_true", help="also run the rerank stage and print its report")
    args = ap.parse_args()

    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text()) or {}
    for k, v in (yaml.safe_load(args.params_yaml) or {}).items():
        params[k] = {**params.get(k, {}), **v} if isinstance(v, dict) else v
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(params, key, value)
    params["overrides"] = {}
    home = args.workspace or Path(tempfile.mkdtemp(prefix="mmr-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    (home / "params.yaml").write_text(yaml.safe_dump(params))
    os.environ["MMR_HOME"] = str(home)
    if not (home / ".dvc").exists():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=home, check=True)

    from mmretrieval import runner as stages
    from mmretrieval.core.settings import get_settings
    from mmretrieval.stages.ingest import ingest

    settings = get_settings(home)
    timings = {}
    if not (home / "data" / "augmented" / args.name).exists():
        t = time.monotonic()
        ingest(args.dataset_dir / "manifest.csv", args.name, settings)
        for verb in ("validate", "clean", "augment"):
            stages.run_stage(verb, args.name, settings)
        timings["prep_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    trained = stages.run_stage("train", args.name, settings)
    timings["train_s"] = round(time.monotonic() - t, 1)
    result = stages.run_stage("evaluate", args.name, settings)
    m = result["metrics"]
    items = m["items"]
    shown = ("recall@1", "recall@5", "recall@10", "hit_rate@1", "hit_rate@10", "precision@10", "mrr", "median_rank")
    out = {"dataset": args.name, "workspace": str(home), "model": params["model"], "train": params["train"],
           "best_epoch": trained["best_epoch"], "test_items": items,
           **{k: m[k] for k in m if k.split("_", 1)[-1] in shown},
           "chance": {k.removesuffix("_chance"): m[k] for k in m if k.removesuffix("_chance").split("_", 1)[-1] in shown
                      and k.endswith("_chance")}, **timings}
    print(json.dumps(out, indent=1))
    if args.rerank:
        t = time.monotonic()
        reranked = stages.run_stage("rerank", args.name, settings, version=str(trained["model_version"]))
        report = json.loads(Path(reranked["report"]).read_text())
        shown_rr = ("recall@1", "recall@5", "recall@10", "mrr")
        print(json.dumps({"rerank_s": round(time.monotonic() - t, 1), "gate": report["gate"],
                          "latency": report["latency"], "train_seconds": report["train_seconds"],
                          "losses": report["losses"], "reranker": report["reranker"]["config"],
                          "metrics": {k: round(v, 4) for k, v in report["metrics"].items()
                                      if k.split("_", 2)[-1] in shown_rr}}, indent=1))


if __name__ == "__main__":
    main()
