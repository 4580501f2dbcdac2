"""Whole-process cost of one-shot CLI commands (issue 23, point 8): wall seconds, CPU seconds (user + system) and
peak resident memory of ``mmr --help``, ``mmr info`` and ``mmr search "a cat"``, for one or more checkouts of the
code against the same published workspace.

    MMR_HOME=<workspace with a published dataset> .venv/bin/python bench/cli_startup.py --dataset demo \\
        --checkout before=/tmp/mmr-before --checkout after=. --runs 5

Each command runs as the installed ``mmr`` script with ``PYTHONPATH=<checkout>``, its output discarded; the
checkouts take turns (A B A B ...) so a shared machine's drift hits them alike, after one unmeasured warm-up run
each. Wall time is read around the child; CPU time and peak RSS are the kernel's accounting of the reaped child
(``os.wait4``; the peak is the largest single process among it and the children it waited for, in MiB). Prints one
JSON line per run, then a Markdown table of the medians with [min-max].
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MMR = Path(sys.executable).parent / "mmr"


def commands(dataset: str) -> dict[str, list[str]]:
    return {"mmr --help": ["--help"], "mmr info": ["info", "--dataset", dataset],
            "mmr search": ["search", "--dataset", dataset, "a cat"]}


def run_once(checkout: Path, argv: list[str]) -> dict[str, float]:
    """One run of ``mmr ARGV`` with ``checkout`` first on the path: wall and CPU seconds, peak RSS in MiB."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    child = subprocess.Popen([str(MMR), *argv], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"mmr {' '.join(argv)} with {checkout} exited {child.returncode}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo")
    ap.add_argument("--checkout", action="append", required=True, metavar="NAME=PATH",
                    help="a checkout to measure (repeat; they take turns)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    checkouts = {name: Path(path).resolve() for name, path in (c.split("=", 1) for c in args.checkout)}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for label, argv in commands(args.dataset).items():
        for path in checkouts.values():
            run_once(path, argv)  # warm-up: the page cache, Milvus Lite's first start
        for i in range(args.runs):
            for name, path in checkouts.items():
                result = run_once(path, argv)
                runs.setdefault((label, name), []).append(result)
                print(json.dumps({"command": label, "checkout": name, "run": i, **result}), flush=True)
    print(f"\n| command | {' | '.join(f'{n} wall s | {n} CPU s | {n} peak MiB' for n in checkouts)} |")
    print("|---|" + "---|" * 3 * len(checkouts))
    for label in commands(args.dataset):
        cells = []
        for name in checkouts:
            for key, fmt in (("wall_s", "{:.2f}"), ("cpu_s", "{:.2f}"), ("peak_mib", "{:.0f}")):
                values = [r[key] for r in runs[(label, name)]]
                cells.append(f"{fmt.format(statistics.median(values))} "
                             f"[{fmt.format(min(values))}–{fmt.format(max(values))}]")
        print(f"| `{label}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
