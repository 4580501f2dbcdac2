"""Media and text that lie about themselves, through the real ingest, validate and clean stages: animations with
blank first frames, blank pictures, a browser's WebM without a duration, a clip of one picture, captions with bidi
overrides, control characters and invisible letters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmretrieval.media.image import open_image
from mmretrieval.stages import clean, validate
from mmretrieval.stages.ingest import ingest
from tests.helpers.animations import SIZE, content, fade_in, placeholder_apng, save
from tests.helpers.files import write_manifest

pytestmark = pytest.mark.integration


def test_animations_with_blank_first_frames_stay_distinct_items_and_blank_pictures_are_quarantined(
        workspace: Path) -> None:
    src = workspace.parent / "src"
    white = Image.new("RGB", (SIZE, SIZE), "white")
    files = {"gif": save(fade_in(1), src / "a/one.gif"), "webp": save(fade_in(2), src / "a/two.webp", lossless=True),
             "apng": save(fade_in(3), src / "a/three.png"), "placeholder": placeholder_apng(4, src / "a/four.png"),
             "white_gif": save([white, Image.new("RGB", (SIZE, SIZE), (254, 254, 254)), white], src / "a/w.gif"),
             "white_still": save([white], src / "a/w.png")}
    captions = {"gif": "a navy bar", "webp": "a red disc", "apng": "a bar and a ball", "placeholder": "shapes",
                "white_gif": "a white fade", "white_still": "nothing"}
    rows = [{"id": k, "modality": "image", "path": str(p.relative_to(src)), "text": captions[k], "split": "train"}
            for k, p in files.items()]
    ingest(write_manifest(src, rows), "anim")
    report = validate.run("anim")
    assert report["reasons"] == {"blank_image": 2}
    result = clean.run("anim")
    assert result["clean"] == 4 and result["merged_duplicates"] == 0  # no white item holding four captions
    kept = pd.read_parquet(workspace / "data/clean/anim/manifest.parquet").set_index("id")
    for seed, item in enumerate(("gif", "webp", "apng", "placeholder"), start=1):
        stored = np.asarray(open_image(workspace / "data/clean/anim" / kept.loc[item, "media"]), dtype=np.int16)
        assert np.abs(stored - np.asarray(content(seed), dtype=np.int16)).mean() < 3, item  # the picture, not white
        assert kept.loc[item, "text"] == captions[item]
    quarantine = pd.read_parquet(workspace / "data/clean/anim/quarantine.parquet").set_index("id")
    assert set(quarantine.index) == {"white_gif", "white_still"}
    assert "blank picture" in quarantine.loc["white_gif", "message"]


def test_captions_are_fixed_not_lost_and_invisible_only_text_is_empty(workspace: Path) -> None:
    src = workspace.parent / "src"
    rows = []
    for i in range(5):
        path = src / "img" / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        content(i).save(path)
        rows.append({"id": f"p{i}", "modality": "image", "path": f"img/p{i}.png", "label": "shape"})
    rows[0]["text"] = "a cup of \u202eeeffoc"  # displays "a cup of coffee"
    rows[1]["text"] = "a cup\x00 of tea\x07 ||| second"  # NUL and BEL: fixed, the picture kept
    rows[2]["text"] = "family \U0001f468\u200d\U0001f469\u200d\U0001f467"  # the joiner stays inside the emoji
    rows[3]["text"] = "\u3164\u3164 ||| a picture"  # a Hangul-filler caption is no caption
    rows[4].update(text="plain", label="\u202epahs")  # a label is normalised like a caption: "shap"
    rows += [{"id": "hangul", "modality": "text", "text": "\u3164\u3164\u3164"},
             {"id": "braille", "modality": "text", "text": "\u2800 \u2800"},
             {"id": "zw", "modality": "text", "text": "\u200b\u200d\ufeff"},
             {"id": "words", "modality": "text", "text": "\u202eseno neves"}]
    ingest(write_manifest(src, rows), "caps")
    validate.run("caps")
    verdict = pd.read_parquet(workspace / "data/validated/caps/rows.parquet").set_index("id")["reason"].to_dict()
    assert verdict == {"p0": "", "p1": "", "p2": "", "p3": "", "p4": "", "hangul": "empty_text",
                       "braille": "empty_text", "zw": "empty_text", "words": ""}
    result = clean.run("caps")
    assert result["clean"] == 6 and result["quarantined"] == 3 and result["captions_fixed"] == 4
    report = (workspace / "data/clean/caps/report.json").read_text()
    assert '"captions_fixed": 4' in report  # p0, p1, p3 and words (p2's emoji and p4 need nothing)
    kept = pd.read_parquet(workspace / "data/clean/caps/manifest.parquet").set_index("id")
    assert kept.loc["p0", "text"] == "a cup of coffee"
    assert kept.loc["p1", "text"] == "a cup of tea ||| second"
    assert kept.loc["p2", "text"] == "family \U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert kept.loc["p3", "text"] == "a picture"
    assert kept.loc["p4", "label"] == "shap" and kept.loc["words", "text"] == "seven ones"
