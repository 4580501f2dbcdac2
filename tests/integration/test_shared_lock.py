"""Per-dataset locks across hosts (MMR_LOCK_URL, mmretrieval/backends/coordination.py) against a real PostgreSQL 15:
two worker processes with their own MMR_HOME (no shared folder) take turns on one dataset's lock, a killed holder
never wedges the dataset, and a coordinator that cannot be reached is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmretrieval.core.errors import LockError
from mmretrieval.core.locks import dataset_lock
from mmretrieval.core.settings import get_settings
from tests.helpers.servers import free_port, postgres_server
from tests.helpers.workspace import REPO, make_workspace

pytestmark = pytest.mark.integration
HOLD = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from mmretrieval.core.locks import dataset_lock
from mmretrieval.core.settings import get_settings
settings = get_settings()
with dataset_lock(settings, "tiny", "train"):
    got = time.time()
    print("HELD", flush=True)
    with dataset_lock(settings, "tiny", "train"):  # re-entrant: the hand-off holds it around the stage
        time.sleep(float(sys.argv[1]))
    print(json.dumps([got, time.time()]), flush=True)
"""


@pytest.fixture(scope="module")
def lock_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def worker(home: Path, lock_url: str, hold_s: float) -> subprocess.Popen[str]:
    env = {**os.environ, "MMR_HOME": str(home), "MMR_LOCK_URL": lock_url,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # this checkout's package
    return subprocess.Popen([sys.executable, "-c", HOLD, str(hold_s)], env=env, cwd=home, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_workers_without_a_shared_folder_take_turns_on_one_dataset(lock_url: str, tmp_path: Path) -> None:
    homes = [make_workspace(tmp_path / name) for name in ("w1", "w2")]
    procs = [worker(home, lock_url, 1.5) for home in homes]
    done = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, done, strict=True):
        assert p.returncode == 0, err[-2000:]
    spans = sorted(json.loads(out.strip().splitlines()[-1]) for out, _ in done)
    assert spans[0][1] <= spans[1][0]  # the second got the lock only after the first let it go
    assert sum("another run holds the shared lock" in err for _, err in done) == 1
    assert not any((home / "var" / "locks").exists() for home in homes)  # no file lock was taken instead


def test_a_killed_holder_releases_the_lock_with_its_connection(lock_url: str, tmp_path: Path) -> None:
    holder = worker(make_workspace(tmp_path / "w1"), lock_url, 600)
    assert holder.stdout.readline().strip() == "HELD"
    settings = get_settings(make_workspace(tmp_path / "w2"))
    settings = settings.model_copy(update={"lock_url": lock_url})
    holder.kill()
    holder.wait(timeout=30)
    started = time.monotonic()
    with dataset_lock(settings, "tiny", "train"):
        waited = time.monotonic() - started
    assert waited < 10  # released by the server when the dead holder's connection closed, no lease to expire


def test_an_unreachable_coordinator_is_a_lock_error_without_the_password(tmp_path: Path) -> None:
    settings = get_settings(make_workspace(tmp_path / "w"))
    url = f"postgresql://mmr:s3cret@127.0.0.1:{free_port()}/mmr"
    with pytest.raises(LockError, match="unreachable") as e, dataset_lock(
            settings.model_copy(update={"lock_url": url}), "tiny", "gate"):
        pass
    assert "s3cret" not in str(e.value) and "127.0.0.1" in str(e.value)
