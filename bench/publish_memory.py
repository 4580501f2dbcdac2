"""Peak memory of publish's build step on a generated embedding set, for this tree and (``--before REV``) another.

    .venv/bin/python bench/publish_memory.py --rows 200000 --dim 384 --before 9b3e5d3

Generates N unit vectors (a mix of image, text and audio rows, so the default ``index.centre: [audio]`` centres a
quarter of them) as embedding shards in embed's format (``--shard-rows`` rows each, the summary ``embed.json``) and
a clean manifest of the same N items, in a temporary MMR_HOME. Then ``publish``'s build step (``_Publication.build``:
read the shards, fit the centring, make the rows, ``MilvusIndex.insert`` with its per-row checks) runs in a fresh
process per code version, the tree at REV unpacked by ``git archive``. Milvus itself is left out: the index's client
is a null client that drops every insert request (Milvus Lite runs in a process of its own anyway), and the alias,
collection, index and load calls do nothing. One JSON line per version: RSS after the imports and settings, the
build's peak RSS (``VmHWM``, reset before the build through ``/proc/self/clear_refs``; Linux) and the process's
``ru_maxrss``, the build's seconds, the rows the null client received and its largest request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET, VERSION, DATA_VERSION = "bench", "1", "d" * 40


def generate(home: Path, rows: int, dim: int, shard_rows: int) -> None:
    """params.yaml, the clean manifest + report, and the embedding shards + summary of ``rows`` items."""
    import pandas as pd

    from mmretrieval.core.settings import get_settings

    (home / "params.yaml").write_text(f"datasets: [{DATASET}]\nmodel: {{embed_dim: {dim}}}\n", encoding="utf-8")
    layout = get_settings(home).layout(DATASET)
    ids = [f"item{i:07d}" for i in range(rows)]
    kinds = np.array(["image", "image", "text", "audio"])[np.arange(rows) % 4]
    layout.clean_manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "modality": kinds, "path": [f"src/{i}.jpg" for i in ids],
                  "text": [f"a caption for {i}" for i in ids], "label": [str(i % 10) for i in range(rows)],
                  "split": "train", "group": "", "sha256": "", "source": "", "metadata": '{"source": "bench"}',
                  "media": [f"media/{i}.jpg" for i in ids]}).to_parquet(layout.clean_manifest, index=False)
    layout.clean_report.write_text(json.dumps({"data_version": DATA_VERSION}), encoding="utf-8")
    folder = layout.embeddings(VERSION)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shards = []
    for k, lo in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - lo)
        v = rng.normal(size=(n, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        shards.append(f"part-{k:05d}.parquet")
        pd.DataFrame({"id": ids[lo:lo + n], "modality": kinds[lo:lo + n], "vector": list(v),
                      "model_version": VERSION, "data_version": DATA_VERSION}).to_parquet(folder / shards[-1],
                                                                                      index=False)
    summary = {"dataset": DATASET, "model": "bench", "model_version": VERSION, "data_version": DATA_VERSION,
               "dim": dim, "rows": rows, "shards": shards, "path": str(folder),
               "modalities": {str(m): int((kinds == m).sum()) for m in ("image", "text", "audio")}}
    (folder / "embed.json").write_text(json.dumps(summary), encoding="utf-8")


def child(home: Path) -> None:
    """The build step against a null Milvus client; prints the JSON line. Uses only what both versions have."""
    import logging
    import resource
    import time

    logging.disable(logging.WARNING)
    from mmretrieval.backends import tracking
    from mmretrieval.backends.index import MilvusIndex
    from mmretrieval.core.settings import get_settings
    from mmretrieval.stages import publish

    sent: list[int] = []

    class NullClient:
        def insert(self, name: str, data: list) -> None:
            sent.append(len(data))

        def flush(self, name: str) -> None:
            pass

    s = get_settings(home)
    summary = json.loads((s.layout(DATASET).embeddings(VERSION) / "embed.json").read_text(encoding="utf-8"))
    ref = tracking.ModelRef("bench", VERSION, "run", "source")
    t = publish.Target(DATASET, s.alias(DATASET), publish.collection_name(s.alias(DATASET), VERSION, DATA_VERSION),
                       ref, summary)
    publish.target = lambda *a, **k: t  # no MLflow: the target is the generated summary
    null = NullClient()
    MilvusIndex.client = property(lambda self: null)  # type: ignore[assignment,method-assign]
    MilvusIndex.resolve_alias = lambda self, alias: None  # type: ignore[method-assign]
    MilvusIndex.exists = lambda self, name: False  # type: ignore[method-assign]
    for step in ("create", "build_index", "load"):
        setattr(MilvusIndex, step, lambda self, *a, **k: None)
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the RSS now
    before = _status_mb("VmRSS")
    started = time.perf_counter()
    built = publish._Publication(DATASET, s, MilvusIndex("null")).build()
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": built["rows"], "rss_mb_before_build": before, "peak_rss_mb": _status_mb("VmHWM"),
                      "peak_rss_mb_getrusage": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "build_s": round(seconds, 1), "sent_rows": sum(sent), "largest_request": max(sent)}),
          flush=True)


def _status_mb(field: str) -> int:
    """A ``/proc/self/status`` memory field (kB there) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024)
    raise KeyError(field)


def run_version(home: Path, code: Path, label: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "MMR_HOME": str(home), "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(home)], env=env, cwd=home,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{label}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return {"code": label, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--shard-rows", type=int, default=10_000, help="rows per embedding shard (embed.shard_rows)")
    ap.add_argument("--before", help="also measure the code at this git revision")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        generate(args.generate, args.rows, args.dim, args.shard_rows)
        return
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory(prefix="mmr-publish-memory-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        # generated in a process of its own: a child's ru_maxrss starts from its parent's RSS at the fork
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--generate", str(home), "--rows",
                        str(args.rows), "--dim", str(args.dim), "--shard-rows", str(args.shard_rows)],
                       env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
        versions = [(REPO, "this tree")]
        if args.before:
            old = Path(tmp) / "before"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "mmretrieval"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            versions.append((old, args.before))
        for code, label in versions:
            print(json.dumps(run_version(home, code, label)), flush=True)


if __name__ == "__main__":
    main()
