"""validate and clean on a dataset three times: cold (empty item cache), warm (the same data version again), and after
an append of ~1 % new items (a new data version); prints seconds and reused/computed counts per run.

    .venv/bin/python bench/prepare_reuse.py ../shared/data/flickr8k_dev

The appended items are copies of the dataset's first images with a changed pixel (new bytes, so new keys), written
to a scratch copy of the source folder; nothing of the source is changed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def append_copy(folder: Path, scratch: Path, share: float) -> Path:
    """A copy of ``folder`` (media linked) whose manifest has ``share`` more image rows with new bytes."""
    from PIL import Image

    shutil.copytree(folder, scratch, copy_function=os.link)
    rows = list(csv.DictReader(open(folder / "manifest.csv", encoding="utf-8")))
    images = [r for r in rows if r.get("modality") == "image"][: max(1, int(len(rows) * share))]
    extra = []
    for i, row in enumerate(images):
        with Image.open(folder / row["path"]) as im:
            im = im.convert("RGB")
            im.putpixel((0, 0), (i % 256, 7, 11))
            rel = f"appended/new{i}.png"
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            im.save(scratch / rel)
        extra.append(row | {"id": f"appended-{i}", "path": rel})
    (scratch / "manifest.csv").unlink()
    with open(scratch / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + extra)
    return scratch / "manifest.csv"


def timed(verb: str, name: str, settings: object) -> dict[str, object]:
    from mmretrieval import runner

    started = time.perf_counter()
    result = runner.run_stage(verb, name, settings)
    return {"seconds": round(time.perf_counter() - started, 1), "reused": result["reused"],
            "computed": result["computed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="a folder with manifest.csv")
    ap.add_argument("--append", type=float, default=0.01, help="share of new items in the appended version")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mmr-reuse-"))
    os.environ["MMR_HOME"] = str(home)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=home, check=True)
    from mmretrieval.core.settings import get_settings
    from mmretrieval.stages.ingest import ingest

    settings = get_settings(home)
    name = args.dataset.name.lower().replace("-", "_")
    rows = ingest(args.dataset / "manifest.csv", name, settings)["rows"]
    out = {"dataset": name, "rows": rows}
    for run in ("cold", "warm"):
        out[run] = {verb: timed(verb, name, settings) for verb in ("validate", "clean")}
    appended = ingest(append_copy(args.dataset, home / "appended-src", args.append), name, settings)
    out["appended_rows"] = appended["rows"] - rows
    out["append"] = {verb: timed(verb, name, settings) for verb in ("validate", "clean")}
    print(json.dumps(out, indent=1))
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
