"""Per-dataset locks: two runs of one dataset's model stages never interleave their writes (the second waits).

What two concurrent runs of one dataset would otherwise share:

* ``train``: the resume checkpoint ``var/checkpoints/<dataset>/<fingerprint>`` (the same params and data give the
  same folder: a second training would resume the first one's MLflow run or delete its temporary folder) and the
  ``challenger`` alias;
* ``evaluate`` and ``promote`` (the *gate*): the report files of ``data/reports/<dataset>/`` (figures logged to the
  evaluated version's MLflow run, so another evaluation must not replace them in between) and the
  ``champion``/``previous`` aliases (``promote`` reads the champion, decides, then moves it: another promote between
  the two would be judged against a stale champion).

Each is a file lock (``filelock``, an OS lock released when the process dies) under ``var/locks/``: it holds across
processes, so across Airflow tasks and DAG runs on one machine (several machines need a shared ``var/``). ``train``
and the gate have separate locks, so one run evaluates while another trains. A lock is taken by the stage functions
themselves (:func:`per_dataset`), so ``mmr``, ``mmr run``, the DAGs and direct calls are all covered.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mmretrieval.core.settings import Settings, get_settings

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def dataset_lock(settings: Settings, dataset: str, name: str) -> Iterator[None]:
    """Hold ``var/locks/<dataset>.<name>.lock``; wait (and say so once) while another process holds it."""
    from filelock import FileLock, Timeout

    path = settings.layout(dataset).lock(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s %s: another run holds %s; waiting for it", name, dataset, path)
        started = time.monotonic()
        lock.acquire()
        log.info("%s %s: got the lock after %.1f s", name, dataset, time.monotonic() - started)
    try:
        yield
    finally:
        lock.release()


def per_dataset(name: str) -> Callable[[F], F]:
    """Decorate a stage function ``fn(dataset, settings=None, ...)`` to run under the dataset's lock ``name``."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def locked(dataset: str, settings: Settings | None = None, *args: Any, **kwargs: Any) -> Any:
            settings = settings or get_settings()
            with dataset_lock(settings, dataset, name):
                return fn(dataset, settings, *args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
