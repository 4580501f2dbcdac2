"""One decoder at every entry point, and filters that mean what they say, on a real published collection.

A dataset made of an image file of every Pillow mode and bit depth (tests/helpers/imagekinds.py) plus coloured
squares goes through every stage (validate, clean, train, evaluate, promote, embed, publish: real DVC, GX, MLflow,
Milvus Lite).
Each raw file is then used as a query through every query entry point -- ``RetrievalClient.search`` with a path,
bytes and a PIL image, the HTTP upload and the CLI -- and must find its own published item (embedded from the
cleaned copy) at score 1.000 with the same hits everywhere: the same pixels at validation, cleaning, training,
embedding and query time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmretrieval.backends.index import MilvusIndex
from mmretrieval.core.settings import get_settings
from mmretrieval.media.image import open_image
from mmretrieval.runner import run_all
from mmretrieval.serving.client import RetrievalClient
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import COLORS, write_manifest, write_png
from tests.helpers.imagekinds import KINDS, write_kind
from tests.helpers.workspace import enter_workspace, make_workspace, mmr

pytestmark = pytest.mark.integration
CONTENT_TYPES = {".png": "image/png", ".tif": "image/tiff"}
CLI_KINDS = ("RGBA", "I;16_png", "EXIF_6")  # the three cases, also through `mmr search --image`


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    root = make_workspace(tmp_path_factory.mktemp("kinds") / "ws")
    src = root.parent / "src"
    rows, expected = [], {}
    for kind in KINDS:
        path, pixels = write_kind(kind, src / "kinds" / kind.replace(";", "_"))
        expected[kind] = pixels
        rows.append({"id": f"kind_{kind}", "modality": "image", "path": str(path.relative_to(src)),
                     "text": f"a picture of kind {kind}", "label": "kind", "split": "train"})
    for name, rgb in COLORS.items():
        for i in range(4):
            rel = f"squares/{name}{i}.png"
            (src / "squares").mkdir(parents=True, exist_ok=True)
            write_png(src / rel, (36 + i, 36), tuple(min(255, c + 6 * i) for c in rgb))  # not blank: a mark
            rows.append({"id": f"{name}{i}", "modality": "image", "path": rel, "label": name,
                         "text": f"a {name} square", "split": ("test", "val", "train", "train")[i]})
    with pytest.MonkeyPatch.context() as mp:
        enter_workspace(mp, root)
        ingest(write_manifest(src, rows), "kinds")
        results = run_all("kinds")
        yield {"root": root, "src": src, "expected": expected, "results": results}


def merged_into(root: Path) -> dict[str, str]:
    dupes = pd.read_parquet(root / "data/clean/kinds/duplicates.parquet")
    return dict(zip(dupes["id"], dupes["merged_into"], strict=True))


def test_every_kind_passes_validation_and_is_cleaned_to_the_pixels_the_decoder_promises(
        served: dict[str, object]) -> None:
    root, expected = Path(served["root"]), served["expected"]
    verdict = pd.read_parquet(root / "data/validated/kinds/rows.parquet").set_index("id")["reason"]
    assert (verdict == "").all(), verdict[verdict != ""].to_dict()
    clean = pd.read_parquet(root / "data/clean/kinds/manifest.parquet").set_index("id")
    into = merged_into(root)
    for kind, pixels in expected.items():
        item = into.get(f"kind_{kind}", f"kind_{kind}")  # identical ramps merge: the survivor holds the same pixels
        stored = np.asarray(open_image(root / "data/clean/kinds" / clean.loc[item, "media"]))  # train/embed read this
        assert np.array_equal(stored, pixels), kind
        raw = root / "data/raw/kinds" / clean.loc[item, "path"]
        assert np.array_equal(np.asarray(open_image(raw)), pixels), kind  # validate / evaluate --manifest read this


def query_forms(path: Path, kind: str) -> dict[str, object]:
    forms: dict[str, object] = {"path": path, "str": str(path), "bytes": path.read_bytes()}
    if kind != "EXIF_5_I;16B":  # Pillow's own TIFF loader drops this orientation unapplied: a PIL object of it is
        with Image.open(path) as im:  # already wrong before mmretrieval sees it (path and bytes are right)
            im.load()
            forms["pil"] = im.copy()
            forms["pil"].info.update(im.info)  # type: ignore[attr-defined]
    return forms


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_file_finds_its_own_item_with_the_same_hits_through_every_query_entry_point(
        served: dict[str, object], kind: str) -> None:
    from fastapi.testclient import TestClient

    from mmretrieval.serving.http import create_app

    root, src = Path(served["root"]), Path(served["src"])
    path = next((src / "kinds" / kind.replace(";", "_")).iterdir())
    own = merged_into(root).get(f"kind_{kind}", f"kind_{kind}")
    settings = get_settings(root)
    answers: dict[str, list[tuple[str, float]]] = {}
    with RetrievalClient("kinds", settings=settings) as client:
        for form, value in query_forms(path, kind).items():
            answers[form] = [(h.id, h.score) for h in client.search(image=value, k=25)]
    with TestClient(create_app("kinds", settings), base_url="http://127.0.0.1") as http:
        with open(path, "rb") as f:
            up = http.post("/search/upload", files={"file": (path.name, f, CONTENT_TYPES[path.suffix])},
                           data={"k": "25"})
        assert up.status_code == 200, up.text
        answers["http"] = [(h["id"], h["score"]) for h in up.json()]
    if kind in CLI_KINDS:
        out = mmr("search", "--image", str(path), "--dataset", "kinds", "--k", "25", "--json", cwd=root,
                  env={"MMR_HOME": str(root)})
        assert out.returncode == 0, out.stderr[-2000:]
        answers["cli"] = [(h["id"], h["score"]) for h in map(json.loads, out.stdout.splitlines())]
    first = answers["path"]
    assert first[0][1] >= 0.9999 and own in {i for i, s in first if s >= 0.9999}, (kind, first)
    for form, hits in answers.items():
        assert [i for i, _ in hits] == [i for i, _ in first], (kind, form)
        assert np.allclose([s for _, s in hits], [s for _, s in first], atol=2e-6), (kind, form)


def test_a_modality_and_a_user_or_filter_never_leak_other_modalities(served: dict[str, object]) -> None:
    """The issue's case: no text items, ``--modality text --filter 'label == "7" or label == "1"'`` -> no hits."""
    from fastapi.testclient import TestClient

    from mmretrieval.serving.http import create_app

    root = Path(served["root"])
    either = 'label == "red" or label == "green"'
    settings = get_settings(root)
    with RetrievalClient("kinds", settings=settings) as client:
        assert client.search("a red square", k=50, modality="text", filter=either) == []
        hits = client.search("a red square", k=50, modality="image", filter=either)
        assert sorted({h.label for h in hits}) == ["green", "red"] and len(hits) == 8
        by_label = client.search("a red square", k=50, labels=["red", "green"])
        assert [h.id for h in by_label] == [h.id for h in hits]
        source = client.search("a red square", k=50, where={"clean_media": hits[0].metadata["clean_media"]})
        assert [h.id for h in source] == [hits[0].id]
    with TestClient(create_app("kinds", settings), base_url="http://127.0.0.1") as http:
        text_only = http.post("/search", json={"text": "a red square", "k": 50, "modality": "text",
                                               "filter": either})
        assert text_only.status_code == 200 and text_only.json() == []
        labels = http.post("/search", json={"text": "a red square", "k": 50, "labels": ["red", "green"]})
        assert sorted({h["label"] for h in labels.json()}) == ["green", "red"]
        media = hits[0].metadata["clean_media"]
        one = http.post("/search", json={"text": "a red square", "k": 50, "where": {"clean_media": media}})
        assert [h["id"] for h in one.json()] == [hits[0].id]
        with open(next((Path(served["src"]) / "kinds" / "RGBA").iterdir()), "rb") as f:
            up = http.post("/search/upload", files={"file": ("a.png", f, "image/png")},
                           data={"k": "50", "labels": ["red", "green"], "where": json.dumps({"clean_media": media})})
        assert up.status_code == 200 and [h["id"] for h in up.json()] == [hits[0].id]
    out = mmr("search", "a red square", "--dataset", "kinds", "--k", "50", "--modality", "text", "--filter", either,
              "--json", cwd=root, env={"MMR_HOME": str(root)})
    assert out.returncode == 0 and out.stdout.strip() == "", out.stderr[-2000:]
    out = mmr("search", "a red square", "--dataset", "kinds", "--k", "50", "--label", "red", "--label", "green",
              "--where", "no_such_key=1", "--json", cwd=root, env={"MMR_HOME": str(root)})
    assert out.returncode == 0 and out.stdout.strip() == "", out.stderr[-2000:]


def test_a_malformed_filter_is_the_users_error_without_reload_or_retry(served: dict[str, object],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from mmretrieval.core.errors import FilterError
    from mmretrieval.serving.http import create_app

    root = Path(served["root"])
    settings = get_settings(root)
    calls = {"load": 0, "search": 0}
    for method in calls:
        original = getattr(MilvusIndex, method)

        def counted(self, *args, _original=original, _name=method, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MilvusIndex, method, counted)
    with RetrievalClient("kinds", settings=settings) as client:
        client.search("a red square", k=3)  # loads once
        calls.update(load=0, search=0)
        with pytest.raises(FilterError, match="label =="):
            client.search("a red square", k=3, filter="label == ")
        assert calls == {"load": 0, "search": 1}
    with TestClient(create_app("kinds", settings), base_url="http://127.0.0.1") as http:
        bad = http.post("/search", json={"text": "a red square", "filter": 'colour == "red"'})
        assert bad.status_code == 400 and "colour" in bad.json()["detail"]
        with open(next((Path(served["src"]) / "kinds" / "RGBA").iterdir()), "rb") as f:
            up = http.post("/search/upload", files={"file": ("a.png", f, "image/png")},
                           data={"k": "3", "filter": "label in ["})
        assert up.status_code == 400 and "label in [" in up.json()["detail"]
    out = mmr("search", "a red square", "--dataset", "kinds", "--filter", "label == ", cwd=root,
              env={"MMR_HOME": str(root)})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mmr: error: the filter 'label ==' is not a valid Milvus expression: ")


def test_k_beyond_ef_and_beyond_the_collection_returns_every_row(served: dict[str, object]) -> None:
    root = Path(served["root"])
    settings = get_settings(root)
    rows = int(served["results"]["publish"]["checks"]["rows"])  # type: ignore[index]
    with RetrievalClient("kinds", settings=settings) as client:
        for k in (1, rows - 1, rows, rows + 1, 1000):
            assert len(client.search("a red square", k=k)) == min(k, rows)
            assert len(client.search("a red square", image=next(
                (Path(served["src"]) / "kinds" / "L").iterdir()), k=k, fusion="late")) == min(k, rows)
    assert os.environ.get("MMR_DATASET") is None
