"""Scale: the whole chain on a generated corpus, then a +1 % append; publish and search at up to 1M vectors.

    PYTHONPATH=. nice .venv/bin/python bench/scale.py --items 10000          # full run + 1 % append
    PYTHONPATH=. nice .venv/bin/python bench/scale.py --vectors 1000000      # Milvus Lite (and --milvus-uri URI)

``--items N``: a corpus of N generated photos is written into a temporary workspace (never the repository): JPEGs of
384x288 px at quality 90, each 1, 2 or 4 tiles cut from random crops of the demo's bundled photos (scikit-image /
scikit-learn), mirrored at random, colour-shifted, with a few translucent shapes, under a brightness ramp and
sensor-like noise, so that it decodes like a real photo and difference hashes spread like a real collection's; one
caption each naming the tiles; about 0.2 % broken files (truncated JPEGs, text named .jpg), 0.7 % exact copies
and 0.6 % re-encoded near copies.
Every stage runs as ``mmr VERB`` in its own subprocess (so its peak RSS is its own, read with ``os.wait4``).
First a champion is trained on the corpus's first ``--seed-items`` rows (ingest .. train, evaluate, promote; a small
from-scratch model: resnet18 at 32 px, one epoch, re-ranker off; reported, but training is not what is measured and
is left out of the ratio). Then the full run: the whole corpus ingested as a new version (replacing the seed), and
validate, clean, augment, embed, publish; then a batch of 1 % new photos appended (``mmr ingest --append``) and the
same stages again. Printed: per stage seconds, seconds per 1,000 items and peak RSS; the append's share of the full
run's wall time.

``--append-again K`` (with ``--items N --keep DIR`` of an earlier run): only a further append, batch K, timed the
same way; for code changed after that run (its ratio is then against the earlier full chain).

``--vectors N``: N unit vectors (``model.embed_dim`` of params.yaml, clustered) through our publish path
(``backends.index.MilvusIndex``: create, insert in 10,000-row chunks, ``build_index`` and ``load`` with the
configured ``index`` params), then ``--queries`` single-vector searches (vectors from the same clusters) as serving
searches (consistency Eventually): p50/p99 latency and recall@10 against exact (numpy) cosine search, and the same
searches at Strong consistency (as publish's checks search: ``strong_p50_ms`` / ``strong_p99_ms``); then the same
rows through pymilvus ``insert`` + ``flush`` directly (raw: same schema, chunks and index), for publish's speed
relative to raw insert + index.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET = "scale"
PARAMS = """datasets: [scale]
model: {image_backbone: resnet18, image_size: 32, embed_dim: 64, text_head: mlp, image_dropout: 0.0}
train: {epochs: 1, batch_size: 64}
rerank: {enabled: false}
gate: {floor: 0.0, margin_over_chance: -1.0, chance_z: 0.0}
"""
SEED = ("ingest", "validate", "clean", "augment", "train", "evaluate", "promote")  # the champion, untimed
FULL = ("ingest", "validate", "clean", "augment", "embed", "publish")  # a data version through to serving
ADJECTIVES = ["warm", "cold", "bright", "dim", "faded", "vivid", "grainy", "sharp"]


def demo_photos() -> list[tuple[object, list[str]]]:
    """(RGB picture, captions) of the demo's bundled photos."""
    import importlib

    from PIL import Image

    from mmretrieval.core.schema import CAPTION_SEPARATOR

    dirs = {"skimage": ("skimage", "data"), "sklearn": ("sklearn.datasets", "images")}
    out = []
    with open(REPO / "mmretrieval" / "demo" / "sample" / "photos.csv", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            module, sub = dirs[rec["package"]]
            path = Path(str(importlib.import_module(module).__file__)).parent / sub / rec["file"]
            with Image.open(path) as im:
                out.append((im.convert("RGB"), rec["captions"].split(CAPTION_SEPARATOR)))
    return out


LAYOUTS = ((1, 1), (1, 2), (2, 1), (2, 2))  # (rows, columns) of tiles in one generated photo


def _tile(rng: np.random.Generator, base: object, size: tuple[int, int]) -> np.ndarray:
    """A random crop of ``base`` resized to ``size``, maybe mirrored, colour-shifted (float32 HxWx3)."""
    from PIL import Image

    w, h = base.size
    scale = rng.uniform(0.35, 1.0)
    cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    tile = base.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(tile, dtype=np.float32) * rng.uniform(0.7, 1.3, size=3)


def _shapes(rng: np.random.Generator, arr: np.ndarray) -> np.ndarray:
    """Two to five translucent ellipses and boxes of random colours over ``arr`` (objects in the scene): they move
    each photo's coarse structure, which is what the difference hash sees."""
    from PIL import Image, ImageDraw

    h, w = arr.shape[:2]
    layer = Image.new("RGBA", (w, h))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        fill = (*map(int, rng.integers(0, 256, 3)), int(rng.integers(120, 230)))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    base = Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert("RGBA")
    return np.asarray(Image.alpha_composite(base, layer).convert("RGB"), dtype=np.float32)


def _photo(rng: np.random.Generator, sources: list, size: tuple[int, int] = (384, 288)) -> tuple[object, str]:
    """One generated photo: 1, 2 or 4 tiles (random crops of random bundled photos) with a brightness ramp and
    sensor noise, so that difference hashes spread like a real collection's; its caption names the tiles."""
    from PIL import Image

    rows, cols = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    w, h = size[0] // cols, size[1] // rows
    arr = np.zeros((size[1], size[0], 3), dtype=np.float32)
    words = []
    for r in range(rows):
        for c in range(cols):
            base, captions = sources[int(rng.integers(len(sources)))]
            arr[r * h:(r + 1) * h, c * w:(c + 1) * w] = _tile(rng, base, (w, h))
            words.append(captions[int(rng.integers(len(captions)))])
    lo_hi = (rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.3))  # a brightness ramp across or down the frame
    if rng.random() < 0.5:
        arr *= np.linspace(*lo_hi, size[0], dtype=np.float32)[None, :, None]
    else:
        arr *= np.linspace(*lo_hi, size[1], dtype=np.float32)[:, None, None]
    arr = _shapes(rng, arr)
    arr += rng.normal(0, 7, size=arr.shape).astype(np.float32)  # sensor noise
    caption = " beside ".join(words[:2]) + f", {ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]}"
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8)), caption


CHUNK = 1_500  # items one generator process writes (a multiple of the copy and breakage periods below)


def _write_chunk(job: tuple[Path, int, int, int, int]) -> list[dict]:
    """Generate items ``lo`` .. ``hi`` - 1 of a corpus into ``folder`` (a process of its own); their manifest rows.
    Each chunk draws from its own seed, so the corpus does not depend on how many processes wrote it."""
    import io

    folder, seed, first_id, lo, hi = job
    rng = np.random.default_rng([seed, lo])
    sources = demo_photos()
    rows, previous = [], b""
    for k in range(lo, hi):
        item = first_id + k
        rel = f"images/p{item:07d}.jpg"
        im, caption = _photo(rng, sources)
        buf = io.BytesIO()
        if k % 150 == 149 and previous:  # an exact copy of the previous file
            data = previous
        elif k % 170 == 169:  # a near copy: smaller, re-encoded
            im.resize((346, 259)).save(buf, "JPEG", quality=80)
            data = buf.getvalue()
        else:
            im.save(buf, "JPEG", quality=90)
            data = buf.getvalue()
        if k % 500 == 499:
            data = data[: len(data) * 2 // 5]  # truncated
        elif k % 700 == 699:
            data = b"this is not an image\n"
        (folder / rel).write_bytes(data)
        previous = data
        rows.append({"id": f"p{item:07d}", "modality": "image", "path": rel, "text": caption, "label": "",
                     "split": "", "source": "bench/scale.py"})
    return rows


def make_corpus(folder: Path, n: int, seed: int, first_id: int = 0, processes: int | None = None) -> Path:
    """``folder/manifest.csv`` and ``folder/images/`` for ``n`` generated items (ids from ``first_id``), written by
    ``processes`` processes (default: the machine's cores)."""
    from concurrent.futures import ProcessPoolExecutor

    from mmretrieval.core.progress import progress

    manifest = folder / "manifest.csv"
    if manifest.is_file():  # a --keep folder's corpus: the same seed and size give the same files, reused
        with open(manifest, encoding="utf-8") as f:
            rows_kept = sum(1 for _ in f) - 1
        if rows_kept == n:
            return manifest
    (folder / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(folder, seed, first_id, lo, min(n, lo + CHUNK)) for lo in range(0, n, CHUNK)]
    rows: list[dict] = []
    with ProcessPoolExecutor(processes or os.cpu_count() or 1) as pool:
        for chunk in progress(pool.map(_write_chunk, jobs), desc="generate", total=len(jobs), unit="chunks"):
            rows.extend(chunk)
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def run_verb(args: list[str], home: Path) -> dict[str, float]:
    """``mmr ARGS`` in a subprocess under MMR_HOME=``home``: wall seconds and its peak RSS (MB, with children)."""
    env = {**os.environ, "MMR_HOME": str(home), "PYTHONPATH": str(REPO)}
    for var in ("MMR_PARAMS", "MMR_MILVUS_URI", "MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "MMR_DATASET"):
        env.pop(var, None)
    log = open(home / "bench.log", "a", encoding="utf-8")  # noqa: SIM115 - closed below
    log.write(f"\n== mmr {' '.join(args)}\n")
    log.flush()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mmretrieval.cli", *args], cwd=home, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if proc.returncode != 0:
        tail = (home / "bench.log").read_text(encoding="utf-8").splitlines()[-25:]
        raise SystemExit(f"mmr {' '.join(args)} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def stage_args(verb: str, manifest: Path | None = None, append: bool = False) -> list[str]:
    if verb == "ingest":
        return ["ingest", str(manifest), "--name", DATASET, *(["--append"] if append else [])]
    return [verb, "--dataset", DATASET]


def _has_append() -> bool:
    from mmretrieval.cli import build_parser

    try:
        build_parser().parse_args(["ingest", "x.csv", "--name", DATASET, "--append"])
    except SystemExit:
        return False
    return True


def _chain(title: str, verbs: tuple[str, ...], manifest: Path, home: Path, items: int, append: bool) -> list[dict]:
    out = []
    for verb in verbs:
        m = run_verb(stage_args(verb, manifest, append), home)
        row = {"run": title, "stage": verb, "items": items, "seconds": round(m["seconds"], 2),
               "s_per_1000": round(m["seconds"] / items * 1000, 2), "peak_rss_mb": round(m["peak_rss_mb"])}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _workspace(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "params.yaml").write_text(PARAMS, encoding="utf-8")
    shutil.copyfile(REPO / "dvc.yaml", home / "dvc.yaml")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=home, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})


def _first_rows(manifest: Path, count: int) -> Path:
    """A manifest of the first ``count`` rows of ``manifest``, beside it (same media paths)."""
    with open(manifest, encoding="utf-8") as f:
        lines = f.readlines()
    seed = manifest.with_name("seed.csv")
    seed.write_text("".join(lines[:count + 1]), encoding="utf-8")
    return seed


def bench_items(n: int, work: Path, share: float, seed_items: int, reuse: Path | None = None) -> dict:
    """The chain on ``n`` generated items, then an append of ``share`` x n new ones. The champion is trained first
    on the corpus's first ``seed_items`` rows (untimed: training is not part of the ratio, and its cost grows with
    epochs, not with what a data version adds). ``reuse``: the MMR_HOME of an earlier run, whose champion serves."""
    if not _has_append():
        raise SystemExit("`mmr ingest --append` is missing in this checkout: the append half needs it (issue 24 "
                         "item 1); merge the branch that adds it")
    home = reuse or work / "home"
    if reuse is None:
        _workspace(home)
    started = time.perf_counter()
    manifest = make_corpus(work / "corpus", n, seed=0)
    extra = max(1, round(n * share))
    batch = make_corpus(work / "batch", extra, seed=1, first_id=n)
    print(json.dumps({"generated_items": n + extra, "seconds": round(time.perf_counter() - started, 1),
                      "corpus_mb": round(sum(p.stat().st_size for p in (work / "corpus").rglob("*")) / 2**20)}),
          flush=True)
    model = [] if reuse else _chain("champion", SEED, _first_rows(manifest, min(n, seed_items)), home,
                                    min(n, seed_items), False)
    full = _chain("full", FULL, manifest, home, n, append=False)
    more = _chain("append", FULL, batch, home, extra, append=True)
    chain = sum(r["seconds"] for r in full)
    added = sum(r["seconds"] for r in more)
    summary = {"items": n, "appended": extra, "full_chain_s": round(chain, 1), "append_chain_s": round(added, 1),
               "append_share_of_full": round(added / chain, 3),
               "max_peak_rss_mb": max(r["peak_rss_mb"] for r in full + more)}
    print(json.dumps(summary), flush=True)
    return {"stages": model + full + more, "summary": summary}


def append_again(n: int, work: Path, share: float, number: int) -> dict:
    """Another +``share`` append on the ``--keep`` folder ``work`` of an earlier ``--items n`` run (its full run and
    first append done): batch ``number`` (2, 3, ...) of new photos, timed through the same stages. For code changed
    after that run; its ratio is against the earlier run's full chain, so say so when reporting it."""
    home = work / "home"
    if not (home / "data" / "raw" / DATASET / "manifest.csv").is_file():
        raise SystemExit(f"{work} holds no earlier --items run (no {home}/data/raw/{DATASET})")
    extra = max(1, round(n * share))
    batch = make_corpus(work / f"batch{number}", extra, seed=number, first_id=n + (number - 1) * extra)
    more = _chain(f"append{number}", FULL, batch, home, extra, append=True)
    summary = {"items": n, "appended": extra, "append_chain_s": round(sum(r["seconds"] for r in more), 1),
               "max_peak_rss_mb": max(r["peak_rss_mb"] for r in more)}
    print(json.dumps(summary), flush=True)
    return {"stages": more, "summary": summary}


def clustered_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` unit vectors around 1,000 fixed centres (the same for every ``seed``: queries fall among the data)."""
    centres = np.random.default_rng(0).normal(size=(1000, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    v = centres[rng.integers(0, 1000, n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rows(vectors: np.ndarray, first: int) -> list[dict]:
    return [{"id": f"v{first + i}", "modality": "image", "vector": v.tolist(), "text": "", "path": "", "label": "",
             "metadata": {}, "model_version": "1", "data_version": "0"} for i, v in enumerate(vectors)]


def _load(ix: object, name: str, vectors: np.ndarray, raw: bool, chunk: int = 10_000, index: bool = True
          ) -> tuple[float, float]:
    """Create ``name``, insert ``vectors`` (ours: ``MilvusIndex.insert``; raw: the client's ``insert``, same chunks)
    and (``index``) build + load the configured index; (insert seconds, index + load seconds)."""
    from mmretrieval.core.settings import get_settings

    params = get_settings().params.index
    if ix.exists(name):
        ix.drop(name)
    started = time.perf_counter()
    ix.create(name, vectors.shape[1], {})
    for lo in range(0, len(vectors), chunk):
        rows = _rows(vectors[lo:lo + chunk], lo)
        if raw:
            ix.client.insert(name, rows)
        else:
            for _ in ix.insert(name, rows):
                pass
    if raw:
        ix.client.flush(name)  # as publish does: the index is built over sealed segments
    inserted = time.perf_counter()
    if not index:
        print(json.dumps({"collection": name, "raw": raw, "insert_s": round(inserted - started, 1)}), flush=True)
        return inserted - started, 0.0
    try:
        ix.build_index(name, params)
    except Exception as e:  # noqa: BLE001 - pymilvus resends create_index after a dropped connection (GOAWAY)
        if "already exists" not in str(e):
            raise
        print(json.dumps({"note": f"{name}: create_index was resent by pymilvus and refused as done: {e}"}))
    ix.load(name)
    done = time.perf_counter()
    print(json.dumps({"collection": name, "raw": raw, "insert_s": round(inserted - started, 1),
                      "index_load_s": round(done - inserted, 1)}), flush=True)
    return inserted - started, done - inserted


def _queries(ix: object, name: str, vectors: np.ndarray, count: int, consistency: str = "Eventually") -> dict:
    from mmretrieval.core.settings import get_settings

    params = get_settings().params.index
    queries = clustered_vectors(count, vectors.shape[1], seed=2)
    exact = np.empty((count, 10), dtype=np.int64)
    for lo in range(0, count, 100):
        scores = queries[lo:lo + 100] @ vectors.T
        exact[lo:lo + 100] = np.argpartition(-scores, 10, axis=1)[:, :10]
    latencies, hits = [], 0
    for q, truth in zip(queries, exact, strict=True):
        started = time.perf_counter()
        found = ix.search(name, [q.tolist()], 10, params, output_fields=["id"], consistency=consistency)[0]
        latencies.append(time.perf_counter() - started)
        hits += len({int(str(h["id"])[1:]) for h in found} & set(truth.tolist()))
    ms = np.array(latencies) * 1000
    return {"queries": count, "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "recall@10": round(hits / (10 * count), 4)}


def bench_vectors(n: int, uri: str, queries: int, raw: bool, raw_index: bool = True) -> dict:
    """Publish ``n`` vectors through ``MilvusIndex``, time ``queries`` searches; with ``raw`` the same rows through
    pymilvus directly. ``raw_index=False`` times the raw insert only and counts the index build as long as
    publish's (the same rows, parameters and Milvus call): it halves the run at 1M."""
    from mmretrieval.backends.index import MilvusIndex
    from mmretrieval.core.settings import get_settings

    s = get_settings()
    dim = s.params.model.embed_dim or 384  # 0: the text model's (MiniLM)
    vectors = clustered_vectors(n, dim, seed=0)
    out: dict = {"vectors": n, "dim": dim, "uri": uri if "://" in uri else "milvus-lite",
                 "index": s.params.index.index_type, "build_params": dict(s.params.index.build_params),
                 "search_params": dict(s.params.index.search_params)}
    with MilvusIndex(uri) as ix:
        insert_s, index_s = _load(ix, f"bench_scale_{n}", vectors, raw=False)
        out |= {"insert_s": round(insert_s, 1), "index_load_s": round(index_s, 1),
                "publish_s": round(insert_s + index_s, 1)}
        out |= _queries(ix, f"bench_scale_{n}", vectors, queries)  # as serving searches (Eventually)
        strong = _queries(ix, f"bench_scale_{n}", vectors, queries, "Strong")  # as publish's checks search
        out |= {"strong_p50_ms": strong["p50_ms"], "strong_p99_ms": strong["p99_ms"]}
        print(json.dumps(out), flush=True)
        ix.drop(f"bench_scale_{n}")
        if raw:
            raw_insert, raw_index_s = _load(ix, f"bench_raw_{n}", vectors, raw=True, index=raw_index)
            out["raw_insert_s"] = round(raw_insert, 1)
            out["raw_index_load_s"] = round(raw_index_s, 1) if raw_index else "publish's"
            out["raw_s"] = round(raw_insert + (raw_index_s if raw_index else index_s), 1)
            out["publish_speed_vs_raw"] = round(out["raw_s"] / out["publish_s"], 3)
            ix.drop(f"bench_raw_{n}")
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, help="full run + append on this many generated photos")
    ap.add_argument("--append-share", type=float, default=0.01, help="size of the appended batch (default 0.01)")
    ap.add_argument("--seed-items", type=int, default=300, help="the champion is trained on this many (default 300)")
    ap.add_argument("--reuse-home", type=Path, help="MMR_HOME of an earlier --keep run: its champion, no training")
    ap.add_argument("--vectors", type=int, help="publish and search this many generated vectors")
    ap.add_argument("--queries", type=int, default=500, help="searches timed in --vectors mode (default 500)")
    ap.add_argument("--no-raw", action="store_true", help="--vectors: skip the raw pymilvus insert for comparison")
    ap.add_argument("--raw-insert-only", action="store_true",
                    help="--vectors: the raw comparison inserts only; its index build counts as publish's")
    ap.add_argument("--milvus-uri", help="--vectors: also on this Milvus server (e.g. http://127.0.0.1:19530)")
    ap.add_argument("--server-only", action="store_true", help="--vectors with --milvus-uri: skip Milvus Lite")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--append-again", type=int, metavar="K",
                    help="with --items N --keep DIR of an earlier run: only append batch K (2, 3, ...) and time it")
    args = ap.parse_args()
    if args.append_again:
        if not (args.items and args.keep) or args.append_again < 2:
            ap.error("--append-again K (K >= 2) needs --items N and --keep DIR of an earlier run")
        print(json.dumps({"items": append_again(args.items, args.keep, args.append_share, args.append_again)},
                         indent=1))
        return
    if not args.items and not args.vectors:
        ap.error("give --items N, --vectors N or both")
    with tempfile.TemporaryDirectory(prefix="mmr-scale-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict = {}
        if args.items:
            result["items"] = bench_items(args.items, work, args.append_share, args.seed_items, args.reuse_home)
        if args.vectors:
            raw, raw_index = not args.no_raw, not args.raw_insert_only
            result["vectors"] = [] if args.server_only and args.milvus_uri else [
                bench_vectors(args.vectors, str(work / "milvus.db"), args.queries, raw, raw_index)]
            if args.milvus_uri:
                result["vectors"].append(bench_vectors(args.vectors, args.milvus_uri, args.queries, raw, raw_index))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
