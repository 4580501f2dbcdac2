"""Library code changes no process-wide state it did not create: loggers of other libraries, PIL's pixel limit,
environment variables (the ``mmr`` CLI, which owns its process, may set its own)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.files import write_png
from tests.helpers.workspace import REPO


def test_importing_every_library_module_changes_no_environment_variable_logger_or_pil_limit() -> None:
    code = (
        "import json, logging, os, pkgutil, importlib\n"
        "import PIL.Image, pymilvus, mlflow, torch  # their own import-time setup is theirs, not ours\n"
        "def state():\n"
        "    loggers = {n: (l.level, len(l.filters), l.propagate, l.disabled) for n, l in\n"
        "               logging.Logger.manager.loggerDict.items() if isinstance(l, logging.Logger)}\n"
        "    return {'env': dict(os.environ), 'pil': PIL.Image.MAX_IMAGE_PIXELS, 'loggers': loggers,\n"
        "            'root': logging.getLogger().level}\n"
        "before = state()\n"
        "import mmretrieval\n"
        "names = [m.name for m in pkgutil.walk_packages(mmretrieval.__path__, 'mmretrieval.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "after = state()\n"
        "changed = {k: v for k, v in after['loggers'].items() if before['loggers'].get(k, v) != v}\n"
        "env = {k for k in set(before['env']) | set(after['env']) if before['env'].get(k) != after['env'].get(k)}\n"
        "print(json.dumps({'modules': len(names), 'env': sorted(env), 'loggers': changed,\n"
        "                  'pil': [before['pil'], after['pil']], 'root': [before['root'], after['root']]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["modules"] > 20
    assert found["env"] == [] and found["loggers"] == {}
    assert found["pil"][0] == found["pil"][1] and found["root"][0] == found["root"][1]


def test_decoding_an_image_keeps_pils_process_wide_pixel_limit(tmp_path: Path) -> None:
    from PIL import Image

    from mmretrieval.core.errors import MediaError
    from mmretrieval.media.image import decode_image

    before = Image.MAX_IMAGE_PIXELS
    decode_image(write_png(tmp_path / "a.png", size=(40, 30)))
    try:
        decode_image(write_png(tmp_path / "big.png", size=(300, 300)), max_pixels=1000)
    except MediaError:
        pass  # refused against our own limit, not PIL's
    else:
        raise AssertionError("a 300x300 image passed a 1000-pixel limit")
    assert Image.MAX_IMAGE_PIXELS == before


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_milvus_keeps_pymilvus_logging_as_configured_and_hides_only_the_misses_it_handles(tmp_path: Path) -> None:
    import pymilvus  # noqa: F401 - configures its loggers on import (level from PYMILVUS_LOG_LEVEL)

    from mmretrieval.backends.index import MilvusIndex

    pymilvus_logger, rpc_logger = logging.getLogger("pymilvus"), logging.getLogger("pymilvus.decorators")
    level, records = pymilvus_logger.level, Records()
    pymilvus_logger.addHandler(records)
    try:
        with MilvusIndex(str(tmp_path / "milvus.db")) as ix:
            assert ix.resolve_alias("mmr_nothing") is None  # an expected miss: pymilvus' traceback dropped
            assert pymilvus_logger.level == level  # (it used to be set to CRITICAL for the whole process)
            assert rpc_logger.filters == []  # the filter is off again after the call
            try:
                ix.client.describe_collection("no_such_collection")  # not handled by the library: still logged
            except pymilvus.MilvusException:
                pass
    finally:
        pymilvus_logger.removeHandler(records)
    errors = [r.getMessage() for r in records.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "describe_collection" in errors[0], errors


def test_an_index_build_answered_already_exists_counts_when_it_is_the_index_asked_for(tmp_path: Path) -> None:
    """A long create_index outlives the gRPC keep-alive, pymilvus sends it again and Milvus answers that the index
    exists: that is done when the existing index is the one asked for, and still an error when it is another."""
    import pymilvus

    from mmretrieval.backends.index import MilvusIndex
    from mmretrieval.core.params import IndexParams

    hnsw = IndexParams(index_type="HNSW", metric_type="COSINE", build_params={"M": 8, "efConstruction": 64})
    with MilvusIndex(str(tmp_path / "milvus.db")) as ix:
        ix.create("c1", 8, {})
        ix.build_index("c1", hnsw)
        ix.build_index("c1", hnsw)  # the resent request: the index is there already, as asked
        other = IndexParams(index_type="IVF_FLAT", metric_type="COSINE", build_params={"nlist": 8})
        with pytest.raises(pymilvus.MilvusException, match="already exist"):
            ix.build_index("c1", other)
