"""``mmr``: every stage as a verb, plus ingest, run, search and the local Airflow run. ``mmr VERB --help``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mmretrieval.core.errors import MMRError

STAGE_HELP = {
    "validate": "check the raw manifest (Great Expectations) and media; verdict per row",
    "clean": "normalise captions, re-encode media, quarantine bad rows",
    "augment": "select the training split and record the augmentation policy",
    "train": "train the dual encoder, log to MLflow, register a challenger",
    "evaluate": "score challenger and champion on the test split (or the champion on --manifest, in every search mode "
                "it serves; --queries: your own queries)",
    "rerank": "train and gate the challenger's cross-attention re-ranker (rerank.enabled: auto skips a model or data "
              "it cannot serve, saying why)",
    "promote": "gate: make the challenger champion if it passes (or --rollback)",
    "embed": "embed every clean item with the champion",
    "publish": "new Milvus collection, verified, then the serving alias swapped (or --rollback)",
}


# libraries whose routine messages (and local paths: Milvus Lite names its file) stay out of the CLI's log
QUIET_LOGGERS = {name: logging.WARNING for name in (
    "httpx", "urllib3", "great_expectations", "alembic", "mlflow", "pymilvus", "sentence_transformers", "filelock",
    "transformers", "faiss", "faiss.loader")} | {"grpc._server": logging.CRITICAL,
                                            "milvus_lite": logging.CRITICAL}  # its lock error: one line of ours


# characters a terminal acts on or reorders instead of showing: C0 and C1 controls (ESC starts escape sequences,
# BEL ends OSC titles, U+009B is a one-byte CSI), DEL, and the bidi controls (U+202E shows text backwards)
_UNSAFE = frozenset([*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), *"\u061c\u200e\u200f\u2028\u2029",
                     *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))])


def terminal_safe(text: Any, keep: str = "") -> str:
    """``text`` (any value, as ``str``) with every character a terminal would act on written as a visible escape:
    ``\\x1b`` for C0/C1 controls and DEL, ``\\u202e`` for bidi controls and line/paragraph separators. Characters in
    ``keep`` (e.g. a newline between log lines) stay. Every field the CLI prints from data goes through this."""
    text = str(text)
    if not any(ch in _UNSAFE for ch in text):
        return text
    return "".join(ch if ch in keep or ch not in _UNSAFE else
                   (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}") for ch in text)


def json_safe(text: str) -> str:
    """JSON text with the characters of :func:`terminal_safe` that ``json.dumps(ensure_ascii=False)`` leaves raw
    (DEL, C1, bidi controls) as four-digit ``\\u`` escapes (``\\u202e``): the same JSON value, harmless on a
    terminal (a raw C0 character in JSON text is layout: ``json.dumps`` escapes those inside strings)."""
    return "".join(f"\\u{ord(ch):04x}" if ch in _UNSAFE and ord(ch) >= 0x7F else ch for ch in text)


def _print(obj: Any) -> None:
    print(json_safe(json.dumps(obj, indent=2, ensure_ascii=False, default=str)))


DESTRUCTIVE = ("promote", "publish", "run", "dag-test")  # they move a champion or a serving alias: --dataset required


def _dataset(args: argparse.Namespace, settings: Any) -> str:
    """``--dataset``; for a verb that is not :data:`DESTRUCTIVE`, else ``$MMR_DATASET``, else the only ingested
    dataset. Never a guess: several datasets and no choice is an error listing them."""
    if args.dataset:
        return str(args.dataset)
    if args.verb in DESTRUCTIVE:
        what = f"{args.verb} --rollback" if getattr(args, "rollback", False) else args.verb
        raise MMRError(f"`mmr {what}` changes what is served: pass --dataset NAME (it never picks a default)")
    if os.environ.get("MMR_DATASET"):
        return os.environ["MMR_DATASET"]
    names = sorted(p.name.removesuffix(".dvc") for p in (settings.data_dir / "raw").glob("*.dvc"))
    if not names:
        raise MMRError("no dataset given and none ingested: pass --dataset NAME or run `mmr ingest` first")
    if len(names) > 1:
        raise MMRError(f"no dataset given and {len(names)} are ingested ({', '.join(names)}): pass --dataset NAME "
                       "(or set MMR_DATASET)")
    return names[0]


def hit_json(hit: Any, hits: Any) -> str:
    """One line of ``mmr search --json``: the hit (with its ``confidence``) and its search's ``no_good_match``."""
    from dataclasses import asdict

    return json.dumps({**asdict(hit), "no_good_match": bool(getattr(hits, "no_good_match", False))},
                      ensure_ascii=False)


def no_good_match_line(hits: Any) -> str:
    """What the plain ``mmr search`` prints above the hits of a search flagged ``no_good_match``."""
    return (f"no good match: the best hit's confidence {max(h.confidence or 0.0 for h in hits):.3f} is below "
            f"{hits.min_confidence:.3f} (calibration.min_confidence, --min-confidence); the nearest items anyway:")


def add_confidence_flag(p: argparse.ArgumentParser) -> None:
    """``mmr search --min-confidence``: the per-search ``no_good_match`` threshold."""
    p.add_argument("--min-confidence", type=float, default=None, metavar="P",
                   help="say \"no good match\" when the best hit's confidence (probability of relevance, 0-1) is "
                        "below P (default: calibration.min_confidence)")


def _search(args: argparse.Namespace, settings: Any) -> int:
    """One search per text given (several amortise the model load); an image/audio query fuses with each text."""
    from mmretrieval.serving.client import RetrievalClient
    from mmretrieval.serving.filters import parse_where

    dataset = _dataset(args, settings)
    where = parse_where(args.where or [])
    texts: list[str | None] = list(args.text) or [None]
    with RetrievalClient(dataset, settings=settings) as client:
        for text in texts:
            hits = client.search(text=text, image=args.image, audio=args.audio, k=args.k, modality=args.modality,
                                 filter=args.filter or "", labels=args.label or [], where=where,
                                 fusion=args.fusion, rerank=args.rerank, min_confidence=args.min_confidence,
                                 mode=args.mode)
            if not hits:  # say so: an empty table cannot tell a too narrow filter from a bug
                print("mmr: no hits: nothing in the collection matches the query's restrictions (--modality, "
                      "--label, --where, --filter)", file=sys.stderr)
            if args.json:
                for h in hits:
                    print(json_safe(hit_json(h, hits)))
                continue
            if not hits:
                continue
            if len(texts) > 1 or args.image or args.audio:
                parts = [f'"{text}"' if text else "", f"image {args.image}" if args.image else "",
                         f"audio {args.audio}" if args.audio else ""]
                print("\nquery: " + terminal_safe(" + ".join(p for p in parts if p)))
            if getattr(hits, "no_good_match", False):
                print(no_good_match_line(hits))
            reranked = any(h.dual_score is not None for h in hits)
            if reranked:
                print(f"(re-ranked by v{hits[0].model_version}'s cross-attention re-ranker: score = its logit, "
                      "dual = the dual encoder's cosine; --rerank 0 for the dual encoder alone)")
            print(f"{'rank':>4}  {'score':>7}  " + (f"{'dual':>7}  " if reranked else "")
                  + f"{'modality':8}  {'path':34}  {'label':5}  text")
            for h in hits:
                caption = h.text.split(" ||| ")[0] if h.text else ""
                if h.best_time_s is not None:  # video: where in the clip the query matched best
                    caption = f"[best at {h.best_time_s:.1f} s] {caption}"
                dual = f"{h.dual_score:7.4f}  " if reranked else ""
                if reranked and h.dual_score is None:
                    dual = f"{'':>7}  "
                path, label, modality = terminal_safe(h.path), terminal_safe(h.label), terminal_safe(h.modality)
                print(f"{h.rank:>4}  {h.score:7.4f}  {dual}{modality:8}  {path[:34]:34}  {label[:5]:5}  "
                      f"{terminal_safe(caption)[:70]}")
    return 0


class TerminalSafeFormatter(logging.Formatter):
    """Wraps a formatter: the formatted record (tracebacks included) through :func:`terminal_safe`, newlines kept."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(self.inner.format(record), keep="\n")


class OneLineErrors(argparse.ArgumentParser):
    """argparse, but a usage error is the one line every other error is: ``mmr: error: …`` (exit status 2)."""

    def error(self, message: str) -> Any:  # argparse's own prints the whole usage first
        self.exit(2, f"mmr: error: {message} (see `{self.prog} --help`)\n")


def _ingest_parser(sub: Any) -> None:
    p = sub.add_parser("ingest", help="register a dataset from a manifest CSV (DVC-tracked under data/raw)")
    p.add_argument("manifest", type=Path, nargs="?",
                   help="manifest CSV; media paths are relative to its folder (optional with --remove)")
    p.add_argument("--name", required=True, help="dataset name (lowercase letters, digits, _)")
    p.add_argument("--append", action="store_true",
                   help="merge MANIFEST into the dataset as a batch: new ids added, changed ids replaced, rows with "
                        "a true `deleted` column removed (default: replace the dataset)")
    p.add_argument("--remove", type=Path, metavar="FILE",
                   help="remove the ids listed in FILE (one per line) from the dataset, with or without a MANIFEST "
                        "(with one: add --append)")


def _cache_parser(sub: Any) -> None:
    p = sub.add_parser("cache", help="report or prune the per-item caches under var/cache (deleting entries only "
                                     "costs time: the next run computes them again)")
    verbs = p.add_subparsers(dest="cache_verb", required=True, metavar="ACTION")
    q = verbs.add_parser("info", help="entries, bytes and oldest/newest use of each cache kind")
    q.add_argument("--kind", help="only this kind (e.g. clean-media, vectors)")
    q.add_argument("--json", action="store_true", help="one JSON object")
    q = verbs.add_parser("prune", help="remove entries unused for an age, then the least recently used until the "
                                       "cache fits a size, and temporary files of killed writers older than an hour")
    q.add_argument("--max-size", metavar="SIZE", help="e.g. 20GB (1000-based), 20GiB or 20G (1024-based), 0")
    q.add_argument("--older-than", metavar="AGE", help="e.g. 30d, 12h, 90m, 2w")
    q.add_argument("--kind", help="only this kind (e.g. clean-media, vectors); --max-size then applies to it alone")
    q.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    q.add_argument("--json", action="store_true", help="one JSON object")


def _cache(args: argparse.Namespace, settings: Any) -> int:
    """``mmr cache info|prune`` over ``var/cache`` (:attr:`Layout.item_cache`, shared by every dataset)."""
    from mmretrieval.core import cache_admin

    root = settings.var_dir / "cache"
    if args.cache_verb == "info":
        report = cache_admin.info(root, args.kind)
        lines = cache_admin.describe_info(report)
    else:
        size = cache_admin.parse_size(args.max_size, "--max-size") if args.max_size is not None else None
        age = cache_admin.parse_age(args.older_than, "--older-than") if args.older_than is not None else None
        report = cache_admin.prune(root, size, age, args.kind, dry_run=args.dry_run)
        lines = cache_admin.describe_prune(report)
    if args.json:
        _print(report)
    else:
        print("\n".join(terminal_safe(line) for line in lines))
    return 0


def _search_parser(sub: Any) -> None:
    """``mmr search``'s arguments."""
    p = sub.add_parser("search", help="query the serving collection of a dataset")
    p.add_argument("text", nargs="*", help="text query (several: one search each)")
    p.add_argument("--image", type=Path, help="image file query")
    p.add_argument("--audio", type=Path, help="audio file query")
    p.add_argument("--k", type=int, default=10, help="number of hits (1-1000, default 10)")
    p.add_argument("--modality", help="only hits of this modality (image, text, audio, video)")
    p.add_argument("--label", action="append", metavar="LABEL",
                   help="only hits with this label (repeat for any of several: --label 7 --label 1)")
    p.add_argument("--where", action="append", metavar="KEY=VALUE",
                   help="only hits whose metadata (the manifest's extra columns) has KEY equal to VALUE (repeatable)")
    p.add_argument("--filter", help='raw Milvus boolean expression, e.g. \'label == "7" or label == "1"\'; '
                   "combined with the other restrictions by `and`")
    p.add_argument("--fusion", choices=("vector", "late"), default="vector",
                   help="how a text and an image/audio query combine: one search with the weighted sum of their "
                        "vectors (default) or one search each, scores summed")
    p.add_argument("--rerank", type=int, default=None, metavar="N",
                   help="re-rank the dual encoder's top N images (or audio clips) with the model's cross-attention "
                        "re-ranker (text queries; default: on at rerank.depth when the serving model has one that "
                        "passed its gate; 0: off)")
    p.add_argument("--mode", choices=("vector", "keyword", "hybrid"), default=None,
                   help="text queries: vector (the dual encoder), keyword (BM25 over captions and "
                        "index.keyword_fields) or hybrid (both, fused by index.hybrid); default: index.search_mode")
    p.add_argument("--dataset", help="dataset name (default: $MMR_DATASET, else the only ingested dataset)")
    add_confidence_flag(p)
    p.add_argument("--json", action="store_true", help="one JSON object per hit, with its confidence and the "
                                                      "search's no_good_match")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="mmr", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("sample", help="build the demo sample from images bundled in installed packages")
    p.add_argument("--out", type=Path, default=Path("build/sample"), help="output folder (default build/sample)")

    _ingest_parser(sub)
    _cache_parser(sub)

    for verb, text in STAGE_HELP.items():
        p = sub.add_parser(verb, help=text, description=text)
        p.add_argument("--dataset", help="dataset name (required)" if verb in DESTRUCTIVE else
                       "dataset name (default: $MMR_DATASET, else the only ingested dataset)")
        if verb == "evaluate":
            p.add_argument("--manifest", type=Path,
                           help="score the dataset's champion on this manifest instead (vectors of the index.centre "
                                "modalities centred on this manifest's items; uncentred metrics as raw_*)")
            p.add_argument("--alias", default="champion", help="model alias to score with --manifest")
            p.add_argument("--queries", type=Path, metavar="CSV",
                           help="with --manifest: score these text queries (columns `query` and `relevant`, several "
                                "relevant manifest ids joined by ' ||| ') instead of the manifest's captions")
        if verb == "train":
            p.add_argument("--force", action="store_true",
                           help="train a new challenger whatever train.when says (the gate still decides whether it "
                                "serves)")
        if verb in ("promote", "publish"):
            p.add_argument("--rollback", action="store_true",
                           help="restore the previous champion" if verb == "promote" else
                           "point the serving alias back at the previous collection")

    p = sub.add_parser("distill", help="student dual encoder taught by the challenger's re-ranker; registered as "
                                       "the new challenger (then evaluate, promote)")
    p.add_argument("--dataset", help="dataset name (default: $MMR_DATASET or the last ingested)")

    p = sub.add_parser("run", help="all stages in order for one dataset, without Airflow")
    p.add_argument("--dataset", help="dataset name (required)")

    p = sub.add_parser("dag-test", help="run the Airflow DAG locally (`airflow dags test`, SQLite)")
    p.add_argument("--dataset", help="dataset name (required)")

    _search_parser(sub)

    p = sub.add_parser("serve", help="HTTP search service and search page (FastAPI; OpenAPI at "
                                            "/openapi.json, /docs with MMR_API_DOCS=1)")
    p.add_argument("--dataset", action="append", help="dataset to serve; repeat to serve several (the first is the "
                   "default of the routes without /datasets/NAME)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other address "
                   "needs API keys, see MMR_API_KEYS)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="serve a non-loopback address without API keys: anyone who reaches the port can search")

    p = sub.add_parser("info", help="what the serving alias of a dataset points to")
    p.add_argument("--dataset", help="dataset name (default: $MMR_DATASET, else the only ingested dataset)")

    p = sub.add_parser("params", help="params.yaml's JSON schema, for editors (`mmr params --schema > "
                                      "params.schema.json`)")
    p.add_argument("--schema", action="store_true", required=True, help="print the JSON schema of params.yaml")
    return parser


def _evaluate_manifest(args: argparse.Namespace, dataset: str, settings: Any) -> dict[str, Any]:
    """``mmr evaluate --manifest M [--queries CSV]``: the champion (``--alias``) in every search mode it serves."""
    if args.manifest is None:
        raise MMRError("mmr evaluate --queries needs --manifest (the items the queries' relevant ids name)")
    from mmretrieval.stages.evaluate import evaluate_manifest

    return evaluate_manifest(dataset, args.manifest, settings, alias=args.alias, queries=args.queries)


def dispatch(args: argparse.Namespace) -> int:
    if args.verb == "params":  # before the settings: it helps to fix a params.yaml that does not load
        from mmretrieval.core.params import Params

        _print(Params.model_json_schema())
        return 0
    from mmretrieval.core.settings import get_settings

    settings = get_settings()
    verb = args.verb
    if verb == "sample":
        from mmretrieval.demo.sample import build

        _print(build(args.out))
    elif verb == "ingest":
        from mmretrieval.handoff import ingest  # the stage, then the data version pushed with MMR_DATA_URL

        if args.manifest is None and args.remove is None:
            raise MMRError("mmr ingest needs a MANIFEST (or --remove FILE to remove ids)")
        _print(ingest(args.manifest, args.name, settings, append=args.append, remove=args.remove))
    elif verb == "search":
        return _search(args, settings)
    elif verb == "cache":
        return _cache(args, settings)
    elif verb == "serve":
        from mmretrieval.serving.http import RedactingFilter, Redactor, ServiceConfig, serve

        redact = RedactingFilter(Redactor.for_settings(settings, ServiceConfig.from_env()))
        for handler in logging.getLogger().handlers:  # every log line of the serving process, libraries' included
            handler.addFilter(redact)
        datasets = args.dataset or [_dataset(argparse.Namespace(dataset=None, verb=verb), settings)]
        serve(datasets, args.host, args.port, settings, insecure_no_auth=args.insecure_no_auth)
    else:
        dataset = _dataset(args, settings)
        if verb == "evaluate" and (args.manifest or args.queries):
            _print(_evaluate_manifest(args, dataset, settings))
        elif verb == "promote" and args.rollback:
            from mmretrieval.handoff import around
            from mmretrieval.stages.promote import rollback

            with around(dataset, settings, ("promotions",), ("promotions",), lock="gate"):  # MMR_DATA_URL: the log
                _print(rollback(dataset, settings))
        elif verb == "publish" and args.rollback:
            from mmretrieval.stages.publish import rollback as unpublish

            _print(unpublish(dataset, settings))
        elif verb == "distill":
            from mmretrieval.handoff import around
            from mmretrieval.stages.distill import run as distill

            with around(dataset, settings, ("clean",), ()):  # with MMR_DATA_URL: the clean data pulled first
                _print(distill(dataset, settings))
        elif verb == "run":
            from mmretrieval.runner import run_all

            _print(run_all(dataset, settings))
        elif verb == "dag-test":
            from mmretrieval.orchestration import dag_test

            dag_test(dataset, settings)
        elif verb == "info":
            from mmretrieval.serving.client import RetrievalClient

            with RetrievalClient(dataset, settings=settings) as client:
                _print(client.info())
        else:
            from mmretrieval.runner import run_stage

            inputs = {"force": True} if verb == "train" and args.force else {}
            _print(run_stage(verb, dataset, settings, **inputs))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights" bars on every call say nothing
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # nor MLflow's per model download
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # log lines quote ids and paths from data
        handler.setFormatter(TerminalSafeFormatter(handler.formatter))
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        return dispatch(args)
    except MMRError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        print(f"mmr: error: {terminal_safe('; '.join(lines))}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("mmr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
