"""Publish and search against a real Milvus standalone server by URI (not Milvus Lite).

The server is the PyPI package ``milvus==2.3.5`` in its own virtualenv (``make milvus-server-venv``), started once for
this module by ``scripts/milvus_server.py`` on a free port; its data is deleted afterwards. Without ``.venv-milvus``
these tests skip, unless ``MMR_REQUIRE_MILVUS_SERVER=1`` (then they fail).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmretrieval.backends import tracking
from mmretrieval.backends.index import MilvusIndex
from mmretrieval.core.errors import IndexStoreError, SearchModeUnavailable
from mmretrieval.core.params import IndexParams
from mmretrieval.core.settings import get_settings
from mmretrieval.runner import run_all, run_stage
from mmretrieval.serving.client import RetrievalClient
from mmretrieval.serving.hybrid import search_ids
from mmretrieval.stages import publish
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import tiny_dataset
from tests.helpers.index_checks import (
    EXPECTED_DEPTHS,
    IVF,
    TEXT_ROWS,
    check_depth,
    check_filters,
    check_limits,
    kill_publish_at_each_step,
    publish_with_a_row_past_the_limits,
)
from tests.helpers.servers import free_port
from tests.helpers.workspace import REPO

pytestmark = [pytest.mark.integration, pytest.mark.milvus_server]

SERVER_PYTHON = REPO / ".venv-milvus" / "bin" / "python"
SERVER_SCRIPT = REPO / "scripts" / "milvus_server.py"
START_TIMEOUT = 240.0  # documented 10-46 s; generous for a loaded 2-core CI runner
KILL_AFTER = 3  # seconds: a loaded 2.3.5 standalone never stops gracefully (scripts/milvus_server.py) and we delete it
STOP_TIMEOUT = 60.0


def require_server_venv() -> None:
    if SERVER_PYTHON.exists():
        return
    reason = f"{SERVER_PYTHON} is missing: run `make milvus-server-venv` to test against a real Milvus server"
    if os.environ.get("MMR_REQUIRE_MILVUS_SERVER") == "1":
        pytest.fail(f"MMR_REQUIRE_MILVUS_SERVER=1 but {reason}")
    pytest.skip(reason)


def wait_until_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    """The URI from the script's ``READY http://…`` line; fails with the log tail if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                return line.split()[1]
        if proc.poll() is not None:
            pytest.fail(f"the Milvus server exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"the Milvus server was not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the script (it stops Milvus cleanly); SIGKILL to its process group if that hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_new_session): the script and milvus only
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Milvus standalone server for this module; yields its URI ``http://127.0.0.1:<port>``."""
    require_server_venv()
    base = tmp_path_factory.mktemp("milvus-server")
    log = base / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(SERVER_PYTHON), str(SERVER_SCRIPT), "--base-dir", str(base / "data"), "--port", str(free_port()),
             "--stop-timeout", str(KILL_AFTER)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield wait_until_ready(proc, log, START_TIMEOUT)
    finally:
        stop_server(proc)
        shutil.rmtree(base, ignore_errors=True)


def empty(uri: str) -> None:
    """Drop every alias, then every collection (aliases first: see MilvusIndex.drop)."""
    with MilvusIndex(uri) as ix:
        for alias in ix.aliases():
            ix.drop_alias(alias)
        for name in ix.collections():
            ix.drop(name)


@pytest.fixture
def server_workspace(workspace: Path, milvus_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The usual isolated workspace, with Milvus on the shared server (emptied before and after each test)."""
    monkeypatch.setenv("MMR_MILVUS_URI", milvus_server)
    empty(milvus_server)
    yield workspace
    empty(milvus_server)


@pytest.fixture
def published(server_workspace: Path) -> dict[str, object]:
    """The tiny dataset through every stage, model v1 published on the server; the publish stage's result."""
    ingest(tiny_dataset(server_workspace.parent / "src"), "tiny")
    return run_all("tiny")["publish"]


def champion_v2_embedded() -> None:
    """Train model v2, make it the champion and embed with it (its collection is not built yet)."""
    run_stage("train", "tiny")
    tracking.set_alias(get_settings(), "tiny", tracking.CHAMPION, "2")
    run_stage("embed", "tiny")


def serving(uri: str) -> str | None:
    with MilvusIndex(uri) as ix:
        return ix.resolve_alias("mmr_tiny")


def published_image(item: str) -> Path:
    return get_settings().home.parent / "src" / "images" / f"{item}.png"


def test_the_pipeline_publishes_on_the_server_and_the_client_searches_through_the_alias(
        published: dict[str, object], milvus_server: str) -> None:
    assert get_settings().milvus_uri == milvus_server
    assert published["changed"] is True and published["model_version"] == "1"
    collection = str(published["collection"])
    with MilvusIndex(milvus_server) as ix:
        assert ix.resolve_alias("mmr_tiny") == collection
        props = ix.properties(collection)
        assert props[publish.STATE] == publish.VERIFIED and props["mmr.model_version"] == "1"
        assert ix.count(collection) == published["checks"]["rows"] == 16
    with RetrievalClient("tiny") as client:
        info = client.info()
        hits = client.search(text="a red square", k=5)
        by_image = client.search(image=published_image("red0"), k=3, modality="image")
    assert info["collection"] == collection and info["rows"] == 16 and info["model_version"] == "1"
    assert len(hits) == 5 and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert {h.model_version for h in hits} == {"1"} and {h.collection for h in hits} == {collection}
    assert by_image[0].id == "red0" and by_image[0].score > 0.99  # the query item itself comes first
    assert publish.run("tiny")["changed"] is False  # a rerun with the same inputs changes nothing


QUERIER = """
import pathlib, sys, time
from mmretrieval.serving.client import RetrievalClient
stop = pathlib.Path(sys.argv[1])
with RetrievalClient("tiny") as client:
    while not stop.exists():
        hits = client.search(text="a red square", k=3)
        print(hits[0].collection, len(hits), flush=True)
        time.sleep(0.02)
"""


class Querier:
    """Another process querying the serving alias in a loop (what a service does), recording what answered."""

    def __init__(self, stop: Path) -> None:
        import sys
        import threading

        self.stop = stop
        self.proc = subprocess.Popen([sys.executable, "-c", QUERIER, str(stop)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.answers: list[str] = []
        self.reader = threading.Thread(target=lambda: self.answers.extend(
            line.split()[0] for line in self.proc.stdout if line.strip().endswith(" 3")))  # type: ignore[union-attr]
        self.reader.start()

    def wait_for(self, collection: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while collection not in self.answers[-1:] and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.1)

    def finish(self) -> tuple[int, str]:
        self.stop.touch()
        _, err = self.proc.communicate(timeout=60)
        self.reader.join(10)
        return self.proc.returncode, err


def test_a_killed_publish_keeps_serving_the_old_collection_and_the_repaired_one_swaps_until_rollback(
        published: dict[str, object], milvus_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = str(published["collection"])
    champion_v2_embedded()
    half = publish.collection_name("mmr_tiny", "2", str(published["data_version"]))
    querier = Querier(get_settings().home / "stop-querier")  # a second process serving queries throughout
    querier.wait_for(first)
    kill_publish_at_each_step(monkeypatch, milvus_server, serving=first, half_built=half)
    repaired = publish.run("tiny")
    assert repaired["changed"] and repaired["collection"] == half and repaired["previous"] == first
    querier.wait_for(half)
    code, err = querier.finish()
    assert code == 0, err[-2000:]  # not one query failed while publishes were killed, repaired and swapped
    assert querier.answers[0] == first and querier.answers[-1] == half and set(querier.answers) == {first, half}
    assert publish.run("tiny")["changed"] is False
    with RetrievalClient("tiny") as client:  # one client across the swap: it follows the alias
        assert {h.model_version for h in client.search(text="a blue square", k=3)} == {"2"}
        back = publish.rollback("tiny")
        assert back["collection"] == first and back["rolled_back_from"] == half
        assert {h.model_version for h in client.search(text="a blue square", k=3)} == {"1"}
    assert serving(milvus_server) == first


def test_an_alias_whose_collection_was_dropped_behind_our_back_can_be_pointed_again(server_workspace: Path,
                                                                                    milvus_server: str) -> None:
    # A 2.3 server keeps a stale alias entry after its collection is dropped: describe says "not found",
    # create says "already exists". MilvusIndex.point_alias must still work.
    with MilvusIndex(milvus_server) as ix:
        ix.create("stale_a", 4, {})
        ix.create("stale_b", 4, {})
        ix.point_alias("stale", "stale_a")
        ix.client.drop_collection("stale_a")  # what another tool might do; MilvusIndex.drop refuses
        assert ix.resolve_alias("stale") is None
        ix.point_alias("stale", "stale_b")
        assert ix.resolve_alias("stale") == "stale_b"


def test_dropping_a_collection_that_serves_an_alias_is_refused(server_workspace: Path, milvus_server: str) -> None:
    with MilvusIndex(milvus_server) as ix:
        ix.create("served", 4, {"mmr.state": "verified"})
        ix.point_alias("serving_alias", "served")
        with pytest.raises(IndexStoreError, match="'served' still serves alias"):
            ix.drop("served")
        assert ix.exists("served") and ix.resolve_alias("serving_alias") == "served"
        ix.drop_alias("serving_alias")
        ix.drop("served")
        assert not ix.exists("served")


def test_search_depth_covers_k_at_the_edges_of_ef_and_of_the_collection_on_the_server(milvus_server: str) -> None:
    empty(milvus_server)
    assert check_depth(milvus_server) == check_depth(milvus_server, IVF) == EXPECTED_DEPTHS


def test_filters_mean_what_they_say_on_the_server(milvus_server: str) -> None:
    empty(milvus_server)
    assert check_filters(milvus_server) == TEXT_ROWS


def test_rows_beyond_the_schema_limits_are_refused_naming_the_row_on_the_server(milvus_server: str) -> None:
    empty(milvus_server)
    assert check_limits(milvus_server) == 6
    empty(milvus_server)


def test_a_row_the_server_would_refuse_stops_publish_in_one_line_and_leaves_nothing_half_built(
        server_workspace: Path) -> None:
    assert publish_with_a_row_past_the_limits(server_workspace).startswith("mmr: error: publish tiny: row ")


def test_keyword_and_hybrid_search_are_refused_on_a_server_without_bm25_naming_its_version(milvus_server: str) -> None:
    empty(milvus_server)
    flat = IndexParams(index_type="FLAT", build_params={}, search_params={})
    rows = [{"id": i, "modality": "image", "vector": v, "text": t, "path": "", "label": "", "metadata": {},
             "model_version": "1", "data_version": "d"} for i, v, t in (("a", [1.0, 0.0], "a red square"),
                                                                       ("b", [0.0, 1.0], "a blue square"))]
    with MilvusIndex(milvus_server) as ix:
        version = ix.server_version()
        ix.create("words", 2, {})  # keyword fields asked for: a 2.3 server has no BM25, so vectors only
        assert not ix.supports_bm25() and not ix.has_keywords("words")
        list(ix.insert("words", rows))
        ix.build_index("words", flat)
        ix.load("words")
        assert search_ids(ix, "words", flat, "vector", [[1.0, 0.0]], None, 2) == [["a", "b"]]
        for mode in ("keyword", "hybrid"):
            with pytest.raises(SearchModeUnavailable) as e:
                search_ids(ix, "words", flat, mode, [[1.0, 0.0]], ["red"], 2)
            message = str(e.value)
            assert f"is version {version}" in message and "2.5 or later" in message and "\n" not in message
    empty(milvus_server)
