"""Progress of long stages: a bar on a terminal, periodic log lines everywhere else (Airflow task logs).

Every loop over items that can take more than a few seconds goes through :func:`progress`. On a terminal it draws a
tqdm bar (items done, items/s, time left); whatever the output, it logs one line every
``MMR_PROGRESS_SECONDS`` seconds (default 30) and one at the end, on the ``mmretrieval.progress`` logger::

    clean demo: 1200/5000 items (24%), 40.1 items/s, 1m35s left

so a task log under Airflow (no terminal) shows a long stage moving.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("mmretrieval.progress")


def interval() -> float:
    """Seconds between progress log lines: ``MMR_PROGRESS_SECONDS`` (default 30; 0 logs every item)."""
    try:
        return max(0.0, float(os.environ.get("MMR_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def duration(seconds: float) -> str:
    """``95.2`` -> ``"1m35s"``; ``4000`` -> ``"1h06m"``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def line(desc: str, done: int, total: int | None, elapsed: float, unit: str = "items") -> str:
    """One progress line: done/total (percent), rate per second, time left (when the total is known)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        left = (total - done) / rate if rate > 0 else float("inf")
        eta = duration(left) if left != float("inf") else "?"
        return f"{desc}: {done}/{total} {unit} ({100 * done / total:.0f}%), {rate:.1f} {unit}/s, {eta} left"
    return f"{desc}: {done} {unit}, {rate:.1f} {unit}/s"


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "items",
             every: float | None = None, size: Callable[[T], int] | None = None) -> Iterator[T]:
    """Yield ``items`` unchanged, reporting progress: a bar when stderr is a terminal, a log line (INFO) every
    ``every`` seconds (default :func:`interval`) and a final one with the total time. ``total`` defaults to
    ``len(items)`` when it has one. With ``size``, each yielded element counts ``size(element)`` units (a batch of
    B items: B), and ``total`` is in those units."""
    if total is None and size is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    every = interval() if every is None else every
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s") or unit, leave=False)
    started = last = time.monotonic()
    done = 0
    try:
        for item in items:
            yield item
            step = size(item) if size is not None else 1
            done += step
            if bar is not None:
                bar.update(step)
            now = time.monotonic()
            if now - last >= every:
                last = now
                log.info("%s", line(desc, done, total, now - started, unit))
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.monotonic() - started
    if elapsed >= 1.0 or every == 0:
        log.info("%s in %s", line(desc, done, total, elapsed, unit), duration(elapsed))
