"""A calibrated "no good match" through the whole path (issue 27): evaluate fits the score calibration on the test
split and records it on the model version, publish copies it onto a real Milvus Lite collection, and the client, the
CLI, the HTTP service and the search page flag a far-away query while a near one keeps its hits.

The model is the pretrained default image tower (frozen EfficientNet-Lite0, a linear head into MiniLM's space)
trained on coloured squares: captions like "a red square" find their squares; a tax question finds nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from mmretrieval.backends import tracking
from mmretrieval.backends.index import SERVING, MilvusIndex
from mmretrieval.core.errors import QueryError
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.evaluation.calibration import PROPERTY, TAG, Calibration
from mmretrieval.serving.client import RetrievalClient
from mmretrieval.serving.http import ServiceConfig, create_app
from tests.helpers.files import tiny_dataset
from tests.helpers.workspace import DEFAULT_TOWER, FAST_PARAMS, enter_workspace, make_workspace

pytestmark = pytest.mark.integration
NEAR = ("a red square", "something blue", "a green square")
THRESHOLD = 0.6  # a random hit among 4 test squares is relevant 1 time in 4: confidences run high in this gallery
FAR = ("how do I fill in tax form 1040 schedule C", "SELECT customer_id FROM orders GROUP BY customer_id",
       "Die Steuererklärung muss bis Ende Juli eingereicht werden.")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The tiny dataset through every stage with the pretrained tower, its 8 test captions enough to calibrate on
    (``calibration.min_queries: 5``) and :data:`THRESHOLD` as its ``calibration.min_confidence``; MMR_HOME points at
    it while the module's tests run (the CLI reads it)."""
    from mmretrieval.runner import run_all
    from mmretrieval.stages.ingest import ingest

    train = {"epochs": 10, "batch_size": 32, "caption_draws": 5}  # 50 draws of each square: confident enough
    params = yaml.safe_load(FAST_PARAMS) | {"model": DEFAULT_TOWER, "train": train,
                                            "calibration": {"min_queries": 5, "min_confidence": THRESHOLD},
                                            "rerank": {"enabled": False}}
    root = make_workspace(tmp_path_factory.mktemp("calibrated") / "ws", yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        enter_workspace(mp, root)
        ingest(tiny_dataset(root.parent / "src"), "tiny")
        run_all("tiny")
        yield get_settings(root)


def collection_property(settings: Settings, value: str | None = None) -> str:
    """The serving collection's calibration property (set first when ``value`` is given)."""
    with MilvusIndex(settings.milvus_uri, settings.milvus_token) as ix:
        name = ix.require_alias(settings.alias("tiny"))
        if value is not None:
            ix.set_properties(name, {PROPERTY: value})
        return str(ix.properties(name).get(PROPERTY, ""))


def test_evaluate_records_the_calibration_and_publish_copies_it_onto_the_collection(calibrated: Settings) -> None:
    champion = tracking.require_alias(calibrated, "tiny", tracking.CHAMPION)
    tag = tracking.version_tags(calibrated, champion)[TAG]
    assert collection_property(calibrated) == tag  # serving reads the calibration of the model that built it
    curve = Calibration.from_json(tag).curves["text->image"]
    report = json.loads(calibrated.layout("tiny").evaluation_latest.read_text())
    assert report["calibration"]["curves"]["text->image"]["queries"] == curve.queries == 8  # 4 test squares x 2
    with RetrievalClient("tiny", settings=calibrated) as client:  # mmr info says what is calibrated
        info = client.info()["calibration"]
    assert info["pairs"] == {"text->image": {"queries": 8, "pairs": curve.pairs}}
    assert info["uncalibrated"] == Calibration.from_json(tag).uncalibrated and info["min_confidence"] == THRESHOLD


def test_a_far_query_is_flagged_and_a_near_one_keeps_its_hits(calibrated: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    threshold = calibrated.params_for("tiny").calibration.min_confidence
    assert threshold == THRESHOLD
    curve = Calibration.from_json(collection_property(calibrated)).curves["text->image"]
    levels, search = [], MilvusIndex.search

    def recorded(self: MilvusIndex, *args: object, **kwargs: object) -> object:
        levels.append(kwargs.get("consistency"))
        return search(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MilvusIndex, "search", recorded)
    with RetrievalClient("tiny", settings=calibrated) as client:
        for text in NEAR:
            hits = client.search(text, k=4)
            assert not hits.no_good_match and hits[0].confidence >= threshold, (text, hits[0])
            assert hits[0].label == text.split()[-1 if text.startswith("something") else 1]  # it found the colour
            for hit in hits:  # each confidence is the collection's curve at the hit's score
                assert hit.confidence == pytest.approx(float(curve(hit.score)), abs=1e-4)
        for text in FAR:
            hits = client.search(text, k=4)
            assert hits.no_good_match and max(h.confidence for h in hits) < threshold, (text, hits[0])
            assert len(hits) == 4  # the nearest items are still there for whoever wants them
        assert not client.search(FAR[0], k=4, min_confidence=0.0).no_good_match  # per-search override
        with pytest.raises(QueryError, match="min_confidence must be a number between 0 and 1, got 1.5"):
            client.search(NEAR[0], min_confidence=1.5)
    assert levels and set(levels) == {SERVING}  # a published collection is never written again: no time-tick wait


def test_the_cli_prints_confidence_and_no_good_match(calibrated: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    from mmretrieval.cli import main

    capsys.readouterr()
    assert main(["search", FAR[0], "--dataset", "tiny", "--k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all(h["no_good_match"] is True and 0 <= h["confidence"] < 1 for h in lines)
    assert main(["search", NEAR[0], "--dataset", "tiny", "--k", "3", "--json"]) == 0
    assert all(json.loads(line)["no_good_match"] is False for line in capsys.readouterr().out.splitlines())
    assert main(["search", FAR[0], "--dataset", "tiny", "--k", "3"]) == 0
    assert capsys.readouterr().out.startswith("no good match: the best hit's confidence")
    assert main(["search", FAR[0], "--dataset", "tiny", "--k", "3", "--min-confidence", "0"]) == 0
    assert "no good match" not in capsys.readouterr().out


def test_over_http_each_hit_has_a_confidence_and_the_header_says_no_good_match(calibrated: Settings) -> None:
    app = create_app(["tiny"], calibrated, ServiceConfig(trusted_hosts=("127.0.0.1", "testserver")))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as http:
        far = http.post("/search", json={"text": FAR[0], "k": 3})
        near = http.post("/search", json={"text": NEAR[0], "k": 3})
        assert far.status_code == near.status_code == 200
        assert far.headers["x-no-good-match"] == "true" and near.headers["x-no-good-match"] == "false"
        assert all(isinstance(h["confidence"], float) for h in far.json() + near.json())
        relaxed = http.post("/datasets/tiny/search", json={"text": FAR[0], "k": 3, "min_confidence": 0})
        assert relaxed.headers["x-no-good-match"] == "false"
        assert http.post("/search", json={"text": FAR[0], "min_confidence": 1.5}).status_code == 422
        square = (calibrated.layout("tiny").clean / "media")
        image = next(p for p in sorted(square.rglob("*")) if p.is_file() and "red1" in p.name).read_bytes()
        upload = http.post("/search/upload", files={"file": ("q.png", image, "image/png")},
                           data={"k": "3", "min_confidence": "0.5"})
        assert upload.status_code == 200 and upload.headers["x-no-good-match"] == "false"  # no image->image curve
        assert all(h["confidence"] is None for h in upload.json())
        spec = app.openapi()["paths"]["/search"]["post"]
        assert "X-No-Good-Match" in spec["responses"]["200"]["headers"]
        assert "min_confidence" in app.openapi()["components"]["schemas"]["SearchRequest"]["properties"]


def test_a_collection_without_calibration_gives_no_confidence_and_never_flags(calibrated: Settings) -> None:
    saved = collection_property(calibrated)
    try:
        collection_property(calibrated, "")  # as published from a model evaluated before calibration existed
        with RetrievalClient("tiny", settings=calibrated) as client:
            hits = client.search(FAR[0], k=3)
            assert client.info()["calibration"]["pairs"] == {}
        assert not hits.no_good_match and all(h.confidence is None for h in hits)
    finally:
        collection_property(calibrated, saved)


def test_the_page_says_no_good_match_instead_of_cards(calibrated: Settings, browser: object,
                                                      tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.helpers.servers import mmr_serve

    driver = browser
    wait = WebDriverWait(driver, 60)  # type: ignore[arg-type]
    with mmr_serve(Path(calibrated.home), "tiny", tmp_path / "serve.log") as served:
        driver.get(f"{served.url}/")  # type: ignore[attr-defined]
        wait.until(ec.text_to_be_present_in_element((By.ID, "serving"), "collection mmr_tiny__m1__"))
        box = driver.find_element(By.ID, "q")  # type: ignore[attr-defined]
        box.send_keys(FAR[0], Keys.ENTER)
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "No good match"))
        assert driver.find_element(By.ID, "no-match").is_displayed()  # type: ignore[attr-defined]
        assert driver.find_elements(By.CSS_SELECTOR, "#results .card") == []  # type: ignore[attr-defined]
        driver.find_element(By.ID, "show-anyway").click()  # type: ignore[attr-defined]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#results .card")) == 12  # type: ignore[attr-defined]
        box.clear()
        box.send_keys(NEAR[0], Keys.ENTER)
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results"))
        assert not driver.find_element(By.ID, "no-match").is_displayed()  # type: ignore[attr-defined]
        first = driver.find_element(By.CSS_SELECTOR, "#results .card")  # type: ignore[attr-defined]
        assert first.find_element(By.CSS_SELECTOR, "dd.label").text == "red"
        assert float(first.find_element(By.CSS_SELECTOR, "dd.confidence").text) >= THRESHOLD
