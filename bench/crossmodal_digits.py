"""Images, speech and words of the ten digits in one space: scikit-learn's 8x8 digits + spoken digits (FSDD).

    .venv/bin/python bench/crossmodal_digits.py ../shared/data/fsdd --epochs 8

Builds one dataset from scikit-learn's bundled handwritten digits (captions "seven", "a handwritten digit seven")
and the FSDD recordings (caption "seven"), runs it through the platform (ingest -> validate -> clean -> augment ->
train -> evaluate -> promote -> embed -> publish) in a temporary workspace, then queries the published collection
with the test split's spoken digits, restricted to images: prints class-level audio->image P@10 and R@1 (a hit is an
image of the spoken digit), image->audio the same way, the text metrics from ``evaluate``, and one example (a spoken
"seven" -> the top image labels).
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

import numpy as np
import yaml

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build_manifest(fsdd: Path, out: Path, digits_per_class: int) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    (out / "images").mkdir(parents=True, exist_ok=True)
    shutil.copytree(fsdd / "recordings", out / "recordings")
    with open(fsdd / "manifest.csv", encoding="utf-8") as f:
        rows = [{**r, "label": str(WORDS.index(r["text"].strip())) if r["text"].strip() in WORDS else r["label"]}
                for r in csv.DictReader(f)]
    digits = load_digits()
    seen = dict.fromkeys(range(10), 0)
    for k, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = int(target)
        if seen[d] >= digits_per_class:
            continue
        seen[d] += 1
        arr = (255 - pixels * (255 / 16)).clip(0, 255).astype("uint8")
        Image.fromarray(arr, mode="L").resize((32, 32), Image.Resampling.BILINEAR).save(out / f"images/d{k}.png")
        rows.append({"id": f"digit_{d}_{k:04d}", "modality": "image", "path": f"images/d{k}.png",
                     "text": f"{WORDS[d]} ||| a handwritten digit {WORDS[d]}", "label": str(d),
                     "split": "test" if seen[d] > digits_per_class * 0.8 else "train"})
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "modality", "path", "text", "label", "split"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return manifest


def class_precision(sim: np.ndarray, q_labels: np.ndarray, g_labels: np.ndarray, k: int = 10) -> tuple[float, float]:
    top = np.argsort(-sim, axis=1)[:, :k]
    rel = g_labels[top] == q_labels[:, None]
    return float(rel.mean()), float(rel[:, 0].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fsdd", type=Path)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--digits-per-class", type=int, default=150)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="mmr-xmodal-"))
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["datasets"] = ["digits"]
    params.setdefault("overrides", {})["digits"] = {"train": {"epochs": args.epochs},
                                                    "gate": {"metric": "a2t_recall@1", "floor": 0.0}}
    (home / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=home, check=True)
    os.environ["MMR_HOME"] = str(home)
    from mmretrieval import runner as stages
    from mmretrieval.core.settings import get_settings
    from mmretrieval.serving.client import RetrievalClient
    from mmretrieval.stages.ingest import ingest

    s = get_settings(home)
    manifest = build_manifest(args.fsdd, home / "src", args.digits_per_class)
    ingest(manifest, "digits", s)
    times = {}
    for verb in stages.STAGES:
        t = time.perf_counter()
        result = stages.run_stage(verb, "digits", s)
        times[verb] = round(time.perf_counter() - t, 1)
        if verb == "evaluate":
            text_metrics = {k: round(v, 3) for k, v in result["metrics"].items()
                            if k.endswith(("recall@1", "precision@10")) and k[:3] in ("t2i", "i2t", "t2a", "a2t")}
    import pandas as pd

    clean = pd.read_parquet(s.layout("digits").clean_manifest)
    test = clean[clean["split"] == "test"]
    with RetrievalClient("digits", settings=s) as client:
        model, centre = client._model_for(client.index.require_alias(client.alias))  # the serving model
        clean_dir = s.layout("digits").clean
        audio = test[test["modality"] == "audio"]
        images = test[test["modality"] == "image"]
        a_vecs = centre.apply(model.encode_audio_files([clean_dir / m for m in audio["media"]]), "audio")
        from mmretrieval.media.image import open_image

        i_vecs = model.encode_images([open_image(clean_dir / m) for m in images["media"]])
        a_lab, i_lab = audio["label"].to_numpy(), images["label"].to_numpy()
        a2i = class_precision(a_vecs @ i_vecs.T, a_lab, i_lab)
        i2a = class_precision(i_vecs @ a_vecs.T, i_lab, a_lab)
        seven = audio[audio["label"] == "7"].iloc[0]
        hits = client.search(audio=clean_dir / seven["media"], k=10, modality="image")
    result = {"test_audio": len(audio), "test_images": len(images),
              "a2i_precision@10": round(a2i[0], 3), "a2i_top1_class_accuracy": round(a2i[1], 3),
              "i2a_precision@10": round(i2a[0], 3), "i2a_top1_class_accuracy": round(i2a[1], 3),
              "evaluate": text_metrics, "stage_seconds": times,
              "example": {"query": f"spoken seven ({seven['id']})", "top10_image_labels": [h.label for h in hits]}}
    print(json.dumps(result, indent=1))
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
