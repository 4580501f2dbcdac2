"""Cold vs warm item cache (issue 24): train and embed a dataset twice in one workspace, the second time with the
cache of the first (`var/cache/`), and print the seconds and the reused/computed counts of each.

    .venv/bin/python bench/item_cache.py ../shared/data/flickr8k_dev

Runs ingest -> validate -> clean -> augment, then train twice (the second run takes the frozen backbone's features
from the cache), evaluate, promote, then embed twice (the second after deleting the embeddings folder, so every
vector comes from the cache). The repository's params.yaml, a temporary MMR_HOME (real DVC, GX, MLflow). Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset_dir", type=Path, help="a folder with manifest.csv")
    ap.add_argument("--name", default="bench")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    home = Path(tempfile.mkdtemp(prefix="mmr-bench-cache-"))
    shutil.copyfile(repo / "params.yaml", home / "params.yaml")
    shutil.copyfile(repo / "dvc.yaml", home / "dvc.yaml")
    os.environ["MMR_HOME"] = str(home)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=home, check=True)

    from mmretrieval.runner import run_stage
    from mmretrieval.stages import embed
    from mmretrieval.stages.ingest import ingest

    ingest(args.dataset_dir / "manifest.csv", args.name)
    for verb in ("validate", "clean", "augment"):
        run_stage(verb, args.name)
    out: dict[str, object] = {}
    for label in ("train_cold", "train_warm"):
        t = time.monotonic()
        trained = run_stage("train", args.name)
        out[label] = {"seconds": round(time.monotonic() - t, 1), "features": trained["features"]}
    for verb in ("evaluate", "promote"):
        run_stage(verb, args.name)
    for label in ("embed_cold", "embed_warm"):
        final = embed.plan(args.name).final
        if final.exists():
            shutil.rmtree(final)
        t = time.monotonic()
        summary = embed.run(args.name)
        out[label] = {"seconds": round(time.monotonic() - t, 1), "cache": summary["cache"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
