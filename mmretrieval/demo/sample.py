"""Build the demo sample from images that installed packages bundle (no download, no ``../shared``).

* 19 photos shipped inside the scikit-image and scikit-learn wheels, each with three captions written for this
  project (``mmretrieval/sample/photos.csv``; licences there: CC0/public domain, and CC BY 2.0 for the two
  scikit-learn photos). All photos go to the ``train`` split so that the demo can find them.
* ``queries.csv``: eight more descriptions of eight of those photos, written for this project and never used in
  training (held out): the demo searches with them, so its results show what the model makes of new sentences.
* Handwritten digits from scikit-learn's bundled ``load_digits`` (8x8, upscaled to 32x32), labelled 0-9 with two
  captions per class; their split is left empty, so the platform assigns it.
* A few short video clips (H.264 MP4, made here): three of those digits moving up, down, left and right
  (``mmretrieval.demo.moving_digits``, captions such as "a seven moving up"), in the ``train`` split so the demo can
  show a
  video hit and the time at which it matched.
"""

from __future__ import annotations

import csv
import importlib
from pathlib import Path
from typing import Any

from mmretrieval.core.schema import CAPTION_SEPARATOR

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_DATA_DIRS = {"skimage": ("skimage", "data"), "sklearn": ("sklearn.datasets", "images")}


def _package_file(package: str, name: str) -> Path:
    module_name, sub = _DATA_DIRS[package]
    module = importlib.import_module(module_name)
    return Path(str(module.__file__)).parent / sub / name


VIDEO_DIGITS = (7, 3, 1)  # digits of the demo's clips, one digit image each, four directions


def build(out: Path, digits_per_class: int = 30) -> dict[str, Any]:
    """Write ``out/manifest.csv``, ``out/images/`` (PNG) and ``out/videos/`` (MP4). Deterministic: same packages,
    same bytes."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    listing = Path(__file__).parent / "sample" / "photos.csv"
    with open(listing, encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            src = _package_file(rec["package"], rec["file"])
            name = Path(rec["file"]).stem
            with Image.open(src) as im:
                im = im.convert("RGB")
                im.thumbnail((256, 256))
                im.save(images / f"{name}.png")
            rows.append({"id": f"photo_{name}", "modality": "image", "path": f"images/{name}.png",
                         "text": rec["captions"], "label": "", "split": "train",
                         "source": f"{rec['package']}:{rec['file']} ({rec['license']})"})
    digits = load_digits()
    seen = {d: 0 for d in range(10)}
    for k, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = int(target)
        if seen[d] >= digits_per_class:
            continue
        seen[d] += 1
        arr = (255 - pixels * (255 / 16)).clip(0, 255).astype("uint8")  # dark ink on white paper
        im = Image.fromarray(arr, mode="L").resize((32, 32), Image.Resampling.BILINEAR)
        name = f"digit_{d}_{k:04d}"
        im.save(images / f"{name}.png")
        captions = [f"a handwritten digit {WORDS[d]}", f"the number {d} written by hand"]
        rows.append({"id": name, "modality": "image", "path": f"images/{name}.png",
                     "text": CAPTION_SEPARATOR.join(captions), "label": str(d), "split": "",
                     "source": "sklearn:load_digits (BSD-3-Clause)"})
    from mmretrieval.demo.moving_digits import write_clips

    firsts = [next(k for k, t in enumerate(digits.target) if int(t) == d) for d in VIDEO_DIGITS]
    clips = write_clips(out / "videos", digits.images, digits.target, firsts, frames=16, size=64)
    rows += [r | {"split": "train", "source": "generated from sklearn:load_digits (BSD-3-Clause)"} for r in clips]
    import shutil

    shutil.copyfile(Path(__file__).parent / "sample" / "queries.csv", out / "queries.csv")
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "modality", "path", "text", "label", "split", "source"])
        writer.writeheader()
        writer.writerows(rows)
    return {"manifest": str(manifest), "queries": str(out / "queries.csv"),
            "items": len(rows), "photos": len(rows) - sum(seen.values()) - len(clips),
            "digits": sum(seen.values()), "videos": len(clips)}
