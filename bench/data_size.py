"""How much data: E4's 340 training photos alone and with 1,000 / 2,000 / 3,000 Flickr8k photos added (issue 27).

    nice .venv/bin/python bench/data_size.py ../shared/data/flickr8k_dev ../shared/data/flickr8k_more --work DIR

Per added count N (``--added``, default 0,1000,2000,3000): a dataset ``e4plus<N>`` is written under ``DIR/data``
(hard links to the photos, a copy where linking fails): every row of ``flickr8k_dev`` with the E4 split written
into its ``split`` column (hash of the photo id, ``split: {train: 0.5, val: 0.0, test: 0.5}``, salt ``mmr``: 340
train / 301 test), plus the first N rows of ``flickr8k_more`` (manifest order) as ``train``. Each is trained and
evaluated with the pipeline's defaults by ``bench/train_quality.py`` in one workspace (``DIR/home``: the per-item
caches of validate, clean and backbone features are shared, so a photo is decoded once over all sizes), always on
the same 301 unseen test photos. Printed: one row per N with t->i R@1 / R@5 / R@10 and i->t hit@10 (%), the best
epoch and the training time. Extra ``--set section.key=value`` options go to every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLIT = "split: {train: 0.5, val: 0.0, test: 0.5}"


def e4_split(ids: list[str]) -> dict[str, str]:
    """id -> train / test by the E4 rule (the pipeline's own hash split)."""
    from mmretrieval.core.params import SplitParams
    from mmretrieval.core.schema import assign_split

    ratios = SplitParams(train=0.5, val=0.0, test=0.5)
    return {i: assign_split(i, ratios) for i in ids}


def link(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (a copy across file systems)."""
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copyfile(src, dst)


def write_dataset(dev: Path, more: Path, added: int, out: Path) -> Path:
    """The dataset folder for ``added`` extra photos; returns it."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    with open(dev / "manifest.csv", newline="", encoding="utf-8") as f:
        dev_rows = list(csv.DictReader(f))
    with open(more / "manifest.csv", newline="", encoding="utf-8") as f:
        more_rows = list(csv.DictReader(f))[:added]
    if len(more_rows) < added:
        raise SystemExit(f"{more} has only {len(more_rows)} rows, {added} asked for")
    split = e4_split([r["id"] for r in dev_rows])
    rows = [{**r, "split": split[r["id"]]} for r in dev_rows] + [{**r, "split": "train"} for r in more_rows]
    for r, root in [(r, dev) for r in dev_rows] + [(r, more) for r in more_rows]:
        dst = out / "images" / Path(r["path"]).name
        link(root / r["path"], dst)
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(dev_rows[0]))
        w.writeheader()
        w.writerows({**r, "path": f"images/{Path(r['path']).name}"} for r in rows)
    return out


def run(dataset: Path, name: str, home: Path, sets: list[str]) -> dict:
    """bench/train_quality.py on one dataset; its printed JSON."""
    cmd = [sys.executable, str(HERE / "train_quality.py"), str(dataset), "--name", name, "--workspace", str(home),
           "--params-yaml", SPLIT, *[a for s in sets for a in ("--set", s)]]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{\n"):out.rindex("}") + 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dev", type=Path, help="flickr8k_dev (the 641 photos E4 splits)")
    ap.add_argument("more", type=Path, help="flickr8k_more (the photos added to the training split)")
    ap.add_argument("--work", type=Path, required=True, help="datasets and the workspace go here (kept)")
    ap.add_argument("--added", default="0,1000,2000,3000")
    ap.add_argument("--set", action="append", default=[], help="section.key=value for every run")
    args = ap.parse_args()
    print("| photos added | training photos | t->i R@1 / R@5 / R@10 | i->t hit@10 | best epoch | train s |")
    print("|---|---|---|---|---|---|")
    for added in (int(a) for a in args.added.split(",")):
        name = f"e4plus{added}"
        dataset = write_dataset(args.dev, args.more, added, args.work / "data" / name)
        m = run(dataset, name, args.work / "home", args.set)
        pct = {k: round(100 * m[k], 1) for k in ("t2i_recall@1", "t2i_recall@5", "t2i_recall@10", "i2t_hit_rate@10")}
        print(f"| {added} | {340 + added} | {pct['t2i_recall@1']} / {pct['t2i_recall@5']} / {pct['t2i_recall@10']} "
              f"| {pct['i2t_hit_rate@10']} | {m['best_epoch']} | {m['train_s']} |", flush=True)


if __name__ == "__main__":
    main()
