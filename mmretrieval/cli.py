"""``mmr``: every stage as a verb, plus ingest, run, search and the local Airflow run. ``mmr VERB --help``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mmretrieval.errors import MMRError

STAGE_HELP = {
    "validate": "check the raw manifest (Great Expectations) and media; verdict per row",
    "clean": "normalise captions, re-encode media, quarantine bad rows",
    "augment": "select the training split and record the augmentation policy",
    "train": "train the dual encoder, log to MLflow, register a challenger",
    "evaluate": "score challenger and champion on the test split (or the champion on --manifest)",
    "rerank": "train and gate the challenger's cross-attention re-ranker (when rerank.enabled)",
    "promote": "gate: make the challenger champion if it passes (or --rollback)",
    "embed": "embed every clean item with the champion",
    "publish": "new Milvus collection, verified, then the serving alias swapped (or --rollback)",
}


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _default_dataset(settings: Any) -> str:
    """MMR_DATASET, else the most recently ingested dataset."""
    if os.environ.get("MMR_DATASET"):
        return os.environ["MMR_DATASET"]
    tracked = sorted((settings.data_dir / "raw").glob("*.dvc"), key=lambda p: p.stat().st_mtime)
    if not tracked:
        raise MMRError("no dataset given and none ingested: pass --dataset NAME or run `mmr ingest` first")
    return tracked[-1].name.removesuffix(".dvc")


def _search(args: argparse.Namespace, settings: Any) -> int:
    """One search per text given (several amortise the model load); an image/audio query fuses with each text."""
    from mmretrieval.client import RetrievalClient

    dataset = args.dataset or _default_dataset(settings)
    texts: list[str | None] = list(args.text) or [None]
    with RetrievalClient(dataset, settings=settings) as client:
        for text in texts:
            hits = client.search(text=text, image=args.image, audio=args.audio, k=args.k, modality=args.modality,
                                 filter=args.filter or "", fusion=args.fusion, rerank=args.rerank)
            if args.json:
                for h in hits:
                    print(h.to_json())
                continue
            if len(texts) > 1 or args.image or args.audio:
                parts = [f'"{text}"' if text else "", f"image {args.image}" if args.image else "",
                         f"audio {args.audio}" if args.audio else ""]
                print("\nquery: " + " + ".join(p for p in parts if p))
            reranked = any(h.dual_score is not None for h in hits)
            print(f"{'rank':>4}  {'score':>7}  " + (f"{'dual':>7}  " if reranked else "")
                  + f"{'modality':8}  {'path':34}  {'label':5}  text")
            for h in hits:
                caption = h.text.split(" ||| ")[0] if h.text else ""
                dual = f"{h.dual_score:7.4f}  " if reranked and h.dual_score is not None else ""
                print(f"{h.rank:>4}  {h.score:7.4f}  {dual}{h.modality:8}  {h.path[:34]:34}  {h.label[:5]:5}  "
                      f"{caption[:70]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmr", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("sample", help="build the demo sample from images bundled in installed packages")
    p.add_argument("--out", type=Path, default=Path("build/sample"), help="output folder (default build/sample)")

    p = sub.add_parser("ingest", help="register a dataset from a manifest CSV (DVC-tracked under data/raw)")
    p.add_argument("manifest", type=Path, help="manifest CSV; media paths are relative to its folder")
    p.add_argument("--name", required=True, help="dataset name (lowercase letters, digits, _)")

    for verb, text in STAGE_HELP.items():
        p = sub.add_parser(verb, help=text, description=text)
        p.add_argument("--dataset", help="dataset name (default: $MMR_DATASET or the last ingested)")
        if verb == "evaluate":
            p.add_argument("--manifest", type=Path,
                           help="score the dataset's champion on this manifest instead (vectors of the index.centre "
                                "modalities centred on this manifest's items; uncentred metrics as raw_*)")
            p.add_argument("--alias", default="champion", help="model alias to score with --manifest")
        if verb in ("promote", "publish"):
            p.add_argument("--rollback", action="store_true",
                           help="restore the previous champion" if verb == "promote" else
                           "point the serving alias back at the previous collection")

    p = sub.add_parser("distill", help="student dual encoder taught by the challenger's re-ranker; registered as "
                                       "the new challenger (then evaluate, promote)")
    p.add_argument("--dataset", help="dataset name (default: $MMR_DATASET or the last ingested)")

    p = sub.add_parser("run", help="all stages in order for one dataset, without Airflow")
    p.add_argument("--dataset", help="dataset name")

    p = sub.add_parser("dag-test", help="run the Airflow DAG locally (`airflow dags test`, SQLite)")
    p.add_argument("--dataset", help="dataset name")

    p = sub.add_parser("search", help="query the serving collection of a dataset")
    p.add_argument("text", nargs="*", help="text query (several: one search each)")
    p.add_argument("--image", type=Path, help="image file query")
    p.add_argument("--audio", type=Path, help="audio file query")
    p.add_argument("--k", type=int, default=10, help="number of hits (1-1000, default 10)")
    p.add_argument("--modality", help="only hits of this modality (image, text, audio)")
    p.add_argument("--filter", help='Milvus boolean expression, e.g. \'label == "7"\'')
    p.add_argument("--fusion", choices=("vector", "late"), default="vector",
                   help="how a text and an image/audio query combine: one search with the weighted sum of their "
                        "vectors (default) or one search each, scores summed")
    p.add_argument("--rerank", type=int, default=None, metavar="N",
                   help="re-rank the dual encoder's top N images with the model's cross-attention re-ranker (text "
                        "queries; default: on at rerank.depth when the serving model has one that passed its "
                        "gate; 0: off)")
    p.add_argument("--dataset", help="dataset name (default: $MMR_DATASET or the last ingested)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit")

    p = sub.add_parser("serve", help="HTTP search service (FastAPI; OpenAPI docs at /docs)")
    p.add_argument("--dataset", help="dataset name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)

    p = sub.add_parser("info", help="what the serving alias of a dataset points to")
    p.add_argument("--dataset", help="dataset name")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    from mmretrieval.config import get_settings

    settings = get_settings()
    verb = args.verb
    if verb == "sample":
        from mmretrieval.sample import build

        _print(build(args.out))
    elif verb == "ingest":
        from mmretrieval.datasets import ingest

        _print(ingest(args.manifest, args.name, settings))
    elif verb == "search":
        return _search(args, settings)
    else:
        dataset = args.dataset or _default_dataset(settings)
        if verb == "evaluate" and args.manifest:
            from mmretrieval.evaluate import evaluate_manifest

            _print(evaluate_manifest(dataset, args.manifest, settings, alias=args.alias))
        elif verb == "promote" and args.rollback:
            from mmretrieval.promote import rollback

            _print(rollback(dataset, settings))
        elif verb == "publish" and args.rollback:
            from mmretrieval.publish import rollback as unpublish

            _print(unpublish(dataset, settings))
        elif verb == "distill":
            from mmretrieval.distill import run as distill

            _print(distill(dataset, settings))
        elif verb == "run":
            from mmretrieval.stages import run_all

            _print(run_all(dataset, settings))
        elif verb == "dag-test":
            from mmretrieval.orchestration import dag_test

            dag_test(dataset, settings)
        elif verb == "serve":
            from mmretrieval.service import serve

            serve(dataset, args.host, args.port, settings)
        elif verb == "info":
            from mmretrieval.client import RetrievalClient

            with RetrievalClient(dataset, settings=settings) as client:
                _print(client.info())
        else:
            from mmretrieval.stages import run_stage

            _print(run_stage(verb, dataset, settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "great_expectations", "alembic", "mlflow", "pymilvus", "sentence_transformers",
                  "filelock", "transformers", "faiss", "faiss.loader", "milvus_lite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return dispatch(args)
    except MMRError as e:
        print(f"mmr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
