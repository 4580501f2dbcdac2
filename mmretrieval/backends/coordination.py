"""Locks that hold across hosts: Postgres session advisory locks (``MMR_LOCK_URL=postgresql://…``).

Why Postgres and not Redis: the cluster already runs Postgres (Airflow's and MLflow's metadata), and a session
advisory lock belongs to the holder's connection: the server releases it the moment that connection ends, so a
worker killed mid-stage (SIGKILL, OOM: at once; a vanished host: once TCP keepalive gives up, ~25 s) never wedges
the dataset, and no lease has to be guessed long enough for the longest training. (The flip side, as with every
lock service: a holder cut off from the server for longer than that loses its lock while it still runs.) A Redis
lock (SET NX PX) expires on a timer instead: too short and a slow training loses its lock while it still writes,
too long and a dead worker blocks the dataset for that long; its safety across a Redis failover is also weaker. An
Airflow pool of one slot would cover only Airflow tasks, not ``mmr`` or a library call, and not per dataset without
a pool per dataset.

The lock key is the first 8 bytes of ``sha256("mmretrieval:" + name)`` as a signed 64-bit integer (the key space of
``pg_try_advisory_lock(bigint)``); ``name`` is ``<dataset>.<lock>`` as in ``var/locks/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator

from mmretrieval.core.errors import LockError

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often a waiting worker asks again
# TCP keepalive on both ends (the server side set for this session): a holder's host that vanishes without closing
# its connection is noticed after about 10 + 3 x 5 = 25 s, and its lock released
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
             "options": "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"}


def lock_key(name: str) -> int:
    """The advisory-lock key of ``name``: a signed 64-bit integer from its SHA-256 (stable across hosts)."""
    return int.from_bytes(hashlib.sha256(f"mmretrieval:{name}".encode()).digest()[:8], "big", signed=True)


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


@contextlib.contextmanager
def advisory_lock(url: str, name: str, poll_s: float = POLL_S) -> Iterator[None]:
    """Hold the Postgres session advisory lock of ``name`` on the server of ``url`` for the block; wait (and say
    so once) while another session holds it. The lock lives as long as this block's own connection (closed after,
    which releases it; a dead holder's connection releases it too). Raises :class:`LockError` when the server
    cannot be reached (the URL printed without its password)."""
    import psycopg2

    key = lock_key(name)
    try:
        conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=10,
                                application_name=f"mmretrieval lock {name}", **KEEPALIVE)
    except psycopg2.Error as e:
        raise LockError(f"lock coordinator {_redacted(url)} unreachable for lock {name!r}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    try:
        conn.autocommit = True
        _wait(conn, key, name, url, poll_s)
    except psycopg2.Error as e:
        conn.close()
        raise LockError(f"lock coordinator {_redacted(url)} failed for lock {name!r}: {e}") from e
    try:
        yield
    finally:
        conn.close()  # ends the session: the server releases the lock


def _wait(conn: object, key: int, name: str, url: str, poll_s: float) -> None:
    with conn.cursor() as cur:  # type: ignore[attr-defined]
        if _try(cur, key):
            return
        log.info("%s: another run holds the shared lock (%s, key %d); waiting for it", name, _redacted(url), key)
        started = time.monotonic()
        while not _try(cur, key):
            time.sleep(poll_s)
        log.info("%s: got the shared lock after %.1f s", name, time.monotonic() - started)


def _try(cur: object, key: int) -> bool:
    cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))  # type: ignore[attr-defined]
    return bool(cur.fetchone()[0])  # type: ignore[attr-defined]
