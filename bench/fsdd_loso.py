"""Leave-one-speaker-out on a spoken-digit manifest (FSDD layout: ids ``<digit>_<speaker>_<n>``).

    .venv/bin/python bench/fsdd_loso.py ../shared/data/fsdd --epochs 8 [--speakers george lucas]

For each speaker: train on the others (their official train and test rows), test on every clip of that speaker;
prints class-level text->audio P@10 and audio->text R@1 per speaker and their mean, with the training time.

The metrics are what ``mmr evaluate`` reports: audio vectors centred on the mean of the evaluated (held-out) clips
(``index.centre``); ``raw_*`` without centring; ``corpus_*`` centred on the mean of *all* clean clips of the run
(four training voices and the held-out one), as a published collection of them would be.
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
from typing import Any

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--speakers", nargs="*")
    args = ap.parse_args()
    with open(args.folder / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    speakers = args.speakers or sorted({r["id"].split("_")[1] for r in rows})
    work = Path(tempfile.mkdtemp(prefix="mmr-loso-"))
    shutil.copytree(args.folder / "recordings", work / "src" / "recordings")
    results = []
    for speaker in speakers:
        home = work / speaker
        home.mkdir()
        params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
        params.setdefault("overrides", {})[speaker] = {"train": {"epochs": args.epochs}}
        (home / "params.yaml").write_text(yaml.safe_dump(params))
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=home, check=True)
        manifest = work / "src" / f"{speaker}.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({**r, "split": "test" if r["id"].split("_")[1] == speaker else "train"})
        os.environ["MMR_HOME"] = str(home)
        from mmretrieval import stages
        from mmretrieval.config import get_settings
        from mmretrieval.datasets import ingest

        settings = get_settings(home)
        ingest(manifest, speaker, settings)
        for verb in ("validate", "clean", "augment"):
            stages.run_stage(verb, speaker, settings)
        t = time.perf_counter()
        stages.run_stage("train", speaker, settings)
        train_s = time.perf_counter() - t
        m = stages.run_stage("evaluate", speaker, settings)["metrics"]
        results.append({"speaker": speaker, "t2a_precision@10": m["t2a_precision@10"],
                        "a2t_recall@1": m["a2t_recall@1"], "raw_t2a_precision@10": m.get("raw_t2a_precision@10"),
                        "raw_a2t_recall@1": m.get("raw_a2t_recall@1"), **corpus_centred(settings, speaker),
                        "test_clips": m["items"], "train_s": round(train_s)})
        print(json.dumps(results[-1]), flush=True)
    keys = [k for k in results[0] if "@" in k and all(r[k] is not None for r in results)]
    mean = {k: round(sum(r[k] for r in results) / len(results), 4) for k in keys}
    print(json.dumps({"per_speaker": results, "mean": mean}, indent=1))


def corpus_centred(settings: Any, dataset: str) -> dict[str, float]:
    """Held-out a->t R@1 / t->a P@10 with the audio centred on the mean of every clean clip (all five voices),
    scored by the same metric code as ``mmr evaluate``."""
    import pandas as pd

    from mmretrieval import tracking
    from mmretrieval.centring import fit
    from mmretrieval.metrics import both_directions, build_eval_set

    clean_dir = settings.layout(dataset).clean
    clean = pd.read_parquet(clean_dir / "manifest.parquet")
    model = tracking.load_model(settings, tracking.require_alias(settings, dataset, tracking.CHALLENGER), "cpu")
    vectors = model.encode_audio_files([clean_dir / m for m in clean["media"]])
    centre = fit(vectors, ["audio"] * len(vectors), ["audio"], settings.params.index.centre_min_items)
    test = (clean["split"] == "test").to_numpy()
    held = clean[test]
    eval_set = build_eval_set(list(held["id"]), [[t] for t in held["text"]], list(held["label"]))
    m = both_directions(model.encode_texts(eval_set.captions), centre.apply(vectors[test], "audio"), eval_set)
    return {"corpus_a2t_recall@1": round(m["i2t_recall@1"], 4),
            "corpus_t2a_precision@10": round(m["t2i_precision@10"], 4)}


if __name__ == "__main__":
    main()
