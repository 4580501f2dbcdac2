"""Run the data-quality layer (ingest, validate, clean, augment) on a dataset and print counts and time per 1,000.

    .venv/bin/python bench/data_quality.py ../shared/data/flickr8k_dev ../shared/data/cifar10_mini
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", type=Path, help="folders with manifest.csv")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mmr-dq-"))
    os.environ["MMR_HOME"] = str(home)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=home, check=True)
    from mmretrieval import runner as stages
    from mmretrieval.core.settings import get_settings
    from mmretrieval.stages.ingest import ingest

    settings = get_settings(home)
    out = []
    for folder in args.datasets:
        name = folder.name.lower().replace("-", "_")
        t0 = time.perf_counter()
        ing = ingest(folder / "manifest.csv", name, settings)
        t1 = time.perf_counter()
        val = stages.run_stage("validate", name, settings)
        t2 = time.perf_counter()
        cl = stages.run_stage("clean", name, settings)
        t3 = time.perf_counter()
        aug = stages.run_stage("augment", name, settings)
        t4 = time.perf_counter()
        n = ing["rows"]
        out.append({
            "dataset": name, "rows": n, "valid": val["valid"], "quarantined": cl["quarantined"],
            "reasons": cl["reasons"], "merged_duplicates": cl["merged_duplicates"],
            "split_leakage_resolved": cl["split_leakage_resolved"], "clean": cl["clean"],
            "train_rows": aug["train_rows"],
            "seconds_per_1000": {"ingest": round((t1 - t0) / n * 1000, 2), "validate": round((t2 - t1) / n * 1000, 2),
                                 "clean": round((t3 - t2) / n * 1000, 2), "augment": round((t4 - t3) / n * 1000, 2)},
        })
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
