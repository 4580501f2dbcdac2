"""Per-dataset locks: two runs of one dataset's model stages never interleave their writes (the second waits).

What two concurrent runs of one dataset would otherwise share:

* ``train``: the resume checkpoint ``var/checkpoints/<dataset>/<fingerprint>`` (the same params and data give the
  same folder: a second training would resume the first one's MLflow run or delete its temporary folder) and the
  ``challenger`` alias;
* ``evaluate`` and ``promote`` (the *gate*): the report files of ``data/reports/<dataset>/`` (figures logged to the
  evaluated version's MLflow run, so another evaluation must not replace them in between) and the
  ``champion``/``previous`` aliases (``promote`` reads the champion, decides, then moves it: another promote between
  the two would be judged against a stale champion).

By default each is a file lock (``filelock``, an OS lock released when the process dies) under ``var/locks/``: it
holds across processes, so across Airflow tasks and DAG runs on one machine. With ``MMR_LOCK_URL`` set
(``postgresql://user@host:port/db``) it is a Postgres session advisory lock instead
(:mod:`mmretrieval.backends.coordination`), which holds between workers on different hosts and is released by the
server when the holder's connection dies. ``train`` and the gate have separate locks, so one run evaluates while
another trains. A lock is taken by the stage functions themselves (:func:`per_dataset`), so ``mmr``, ``mmr run``,
the DAGs and direct calls are all covered. A thread that holds a lock may take it again (re-entrant: the hand-off
of :mod:`mmretrieval.handoff` holds the stage's lock around pull, run and push, and the stage takes it inside).

This module is the interface; the shared coordinator's client lives in ``backends`` and is found by the URL's
scheme (:data:`COORDINATORS`, imported by name on first use, as fsspec finds a protocol's file system): core never
imports a backend module statically, and only backends import the database client.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mmretrieval.core.errors import ConfigError
from mmretrieval.core.settings import Settings, get_settings

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


COORDINATORS = {"postgresql": "mmretrieval.backends.coordination", "postgres": "mmretrieval.backends.coordination"}
_held = threading.local()  # the locks this thread holds: {(where, dataset, name): depth}


@contextlib.contextmanager
def dataset_lock(settings: Settings, dataset: str, name: str) -> Iterator[None]:
    """Hold the lock ``name`` of ``dataset`` (a file under ``var/locks/``, or the ``MMR_LOCK_URL`` coordinator's);
    wait (and say so once) while another process holds it. Re-entrant within a thread. Raises
    :class:`~mmretrieval.core.errors.ConfigError` for a ``MMR_LOCK_URL`` of unknown scheme."""
    key = (settings.lock_url or str(settings.var_dir), dataset, name)
    held: dict[tuple[str, str, str], int] = _held.__dict__.setdefault("locks", {})
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    with _acquire(settings, dataset, name):
        held[key] = 1
        try:
            yield
        finally:
            held.pop(key, None)


def _acquire(settings: Settings, dataset: str, name: str) -> contextlib.AbstractContextManager[None]:
    if settings.lock_url:
        import importlib

        scheme = settings.lock_url.split("://", 1)[0].split("+", 1)[0]
        if scheme not in COORDINATORS:
            raise ConfigError(f"MMR_LOCK_URL={settings.lock_url.split('://')[0]}://…: no lock coordinator for "
                              f"{scheme!r}; use one of {sorted(COORDINATORS)}")
        client = importlib.import_module(COORDINATORS[scheme])
        return client.advisory_lock(settings.lock_url, f"{dataset}.{name}")  # type: ignore[no-any-return]
    return _file_lock(settings, dataset, name)


@contextlib.contextmanager
def _file_lock(settings: Settings, dataset: str, name: str) -> Iterator[None]:
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
