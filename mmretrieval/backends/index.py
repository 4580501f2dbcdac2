"""The only module that talks to pymilvus: collection schema, create, insert, index, load, search, aliases, drop.

Works the same on a Milvus Lite file (``…/milvus.db``) and a Milvus server URI (``http://host:19530``; tested against
a real 2.3.5 standalone server by ``tests/integration/test_milvus_server.py``). Each collection records what built it
in its properties (``mmr.*``: model name/version, data version, state, previous collection of the alias, publish
time). Where the two differ, this module makes them behave alike:

- a missing alias is ``None`` on both, but any other failure (server down, timeout) is an :class:`IndexStoreError`,
  never mistaken for "no alias" (a publish would otherwise forget its rollback target);
- a 2.3 server keeps a stale entry for an alias whose collection was dropped (``describe_alias`` says it does not
  exist, ``create_alias`` says it does): :meth:`MilvusIndex.point_alias` falls back to ``alter_alias``;
- dropping a collection that an alias still points at is refused here (Lite and 2.3 drop the alias silently, 2.4+
  refuse): point or drop the alias first;
- row counts and publish's checks use Strong consistency, so fresh inserts count on a server; serving searches
  (``consistency=SERVING``) use Eventually: a served collection was flushed, indexed, loaded and verified before its
  alias pointed at it and is never written again, and a 2.3 server makes a Strong search wait for its next time
  tick (up to ~200 ms: p50 222 ms at 1M vectors, docs/benchmarks.md);
- the field limits (:data:`~mmretrieval.core.schema.VARCHAR_LIMITS`, :data:`~mmretrieval.core.schema.JSON_MAX_BYTES`)
  are the data contract's (:mod:`mmretrieval.core.schema`), used here to create every collection and by validation,
  so a row that would not fit is refused before training, not at publish (Lite does not enforce the JSON size; a
  server does);
- HNSW's ``ef`` is raised to at least the number of hits asked for (Lite otherwise returns at most ``ef`` hits, a
  server errs or cuts), and a filter Milvus cannot parse is a :class:`FilterError` (the user's error), not a failure
  of the store;
- keyword search (BM25): where Milvus has the BM25 function (Milvus Lite 2.5+, a 2.5+ server),
  :meth:`MilvusIndex.create` adds an analysed ``keywords`` field (what :func:`keyword_text` makes of the item's
  captions and the fields in ``index.keyword_fields``) and a sparse field the function fills; on a server without
  it (2.3) the collection is created without both, publish and vector search work as before, and
  :meth:`MilvusIndex.keyword_search` raises :class:`SearchModeUnavailable` naming the server's version. Lite reports
  a BM25 hit's distance negated, a server positive: scores here are the BM25 score (>= 0) on both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.core.errors import AliasNotFoundError, FilterError, IndexStoreError, SearchModeUnavailable
from mmretrieval.core.schema import JSON_MAX_BYTES, MAX_VARCHAR, VARCHAR_LIMITS, split_captions

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from mmretrieval.core.params import IndexParams

log = logging.getLogger(__name__)
MISSING_ALIAS = ("not found", "not exist")  # server: "alias not found"; Lite: "alias '…' does not exist"
OUTPUT_FIELDS = ["id", "modality", "text", "path", "label", "metadata", "model_version", "data_version"]
HNSW_TYPES = ("HNSW", "HNSW_SQ", "HNSW_PQ", "HNSW_PRQ")
IVF_TYPES = ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN")
MAX_NPROBE = 65_536  # Milvus' upper bound for nprobe
STRONG = "Strong"  # every write acknowledged so far is searched (publish, its checks, evaluation)
SERVING = "Eventually"  # a published collection: never written again, so no need to wait for a time tick
RPC_LOGGER = "pymilvus.decorators"  # where pymilvus logs a failed call, with its traceback
KEYWORDS, KEYWORD_SPARSE, BM25_FUNCTION = "keywords", "keywords_bm25", "keywords_bm25_fn"
BM25_SINCE = (2, 5)  # the first Milvus (and Milvus Lite) version with the BM25 function
FILTER_WORDS = ("expr", "parse", "column", "field", "operand", "operator", "invalid", "literal", "token")


def clip_utf8(text: str, limit: int) -> str:
    """Cut a string so its UTF-8 encoding fits ``limit`` bytes (Milvus VARCHAR limits are in bytes)."""
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", errors="ignore")


def _batches(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    """``rows`` in lists of ``size``; the text field is a display copy of the captions (merged duplicates may exceed
    it): a row whose text is too long comes as a copy with the text cut, never refused."""
    chunk: list[Mapping[str, Any]] = []
    for row in rows:
        text = row.get("text")
        if isinstance(text, str) and (cut := clip_utf8(text, VARCHAR_LIMITS["text"])) is not text:
            row = dict(row, text=cut)
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class MilvusIndex:
    _lite_users: dict[str, int] = {}  # open MilvusIndex objects per Lite file in this process

    def __init__(self, uri: str, token: str = "") -> None:
        self.uri = uri
        self.token = token
        self._client: MilvusClient | None = None
        self._version = ""  # the Milvus version, asked once (server_version)

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            from pymilvus import MilvusClient
            from pymilvus.exceptions import MilvusException

            if "://" not in self.uri:
                Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
            try:
                self._client = MilvusClient(uri=self.uri, token=self.token)
            except (MilvusException, OSError) as e:
                held = "://" not in self.uri and "open local milvus failed" in str(e).lower()
                hint = (": another process holds this Milvus Lite file (one process at a time: stop `mmr serve` or "
                        "the pipeline using it, or use a Milvus server, MMR_MILVUS_URI)") if held else f": {e}"
                raise IndexStoreError(f"cannot open Milvus at {safe_uri(self.uri)!r}{hint}") from e
            if "://" not in self.uri:
                MilvusIndex._lite_users[self.uri] = MilvusIndex._lite_users.get(self.uri, 0) + 1
        return self._client

    def close(self) -> None:
        """Close the connection; the last user of a Lite file also stops its in-process server (the file's lock)."""
        if self._client is not None:
            self._client.close()
            self._client = None
            if "://" not in self.uri:
                users = MilvusIndex._lite_users.get(self.uri, 1) - 1
                MilvusIndex._lite_users[self.uri] = users
                if users <= 0:
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(self.uri)

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- aliases -------------------------------------------------------------------------------------------
    def resolve_alias(self, alias: str) -> str | None:
        """The collection behind ``alias``, ``None`` when there is no such alias."""
        from pymilvus.exceptions import MilvusException

        try:
            with _handled_here():
                return str(self.client.describe_alias(alias)["collection_name"])
        except MilvusException as e:
            if any(word in str(e).lower() for word in MISSING_ALIAS):
                return None
            raise IndexStoreError(f"cannot read alias {alias!r} in {safe_uri(self.uri)}: {_message(e)}") from e

    def require_alias(self, alias: str) -> str:
        name = self.resolve_alias(alias)
        if name is None:
            raise AliasNotFoundError(f"no collection behind alias {alias!r} in {safe_uri(self.uri)}: "
                                     "run `mmr publish` first")
        return name

    def point_alias(self, alias: str, collection: str) -> None:
        """Create ``alias`` on ``collection`` or move it there (one atomic step for readers)."""
        from pymilvus.exceptions import MilvusException

        if self.resolve_alias(alias) is not None:
            self.client.alter_alias(collection, alias)
            return
        try:
            with _handled_here():
                self.client.create_alias(collection, alias)
        except MilvusException as e:  # a 2.3 server still knows the alias of a dropped collection: move it instead
            if "already exist" not in str(e).lower():
                raise IndexStoreError(f"cannot point alias {alias!r} at {collection!r}: {_message(e)}") from e
            log.info("alias %s is stale on %s (its collection was dropped); moving it to %s", alias, self.uri,
                     collection)
            self.client.alter_alias(collection, alias)

    def drop_alias(self, alias: str) -> None:
        """Remove ``alias`` (the collection stays); a missing alias is fine."""
        self.client.drop_alias(alias)

    def aliases_of(self, collection: str) -> list[str]:
        return [str(a) for a in self.client.list_aliases(collection_name=collection).get("aliases", [])]

    def aliases(self) -> list[str]:
        return [str(a) for a in self.client.list_aliases().get("aliases", [])]

    # --- collections ---------------------------------------------------------------------------------------
    def collections(self, prefix: str = "") -> list[str]:
        return sorted(c for c in self.client.list_collections() if c.startswith(prefix))

    def exists(self, name: str) -> bool:
        return bool(self.client.has_collection(name))

    def properties(self, name: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.client.describe_collection(name).get("properties", {}).items()}

    def set_properties(self, name: str, props: dict[str, str]) -> None:
        self.client.alter_collection_properties(name, properties=props)

    def create(self, name: str, dim: int, props: dict[str, str], keywords: bool = True) -> None:
        """Create collection ``name`` with ``dim``-d vectors and properties ``props``; with ``keywords`` and a Milvus
        that has the BM25 function, also the keyword fields (:func:`add_keyword_fields`); else vectors only."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        limit = VARCHAR_LIMITS
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=limit["id"])
        schema.add_field("modality", DataType.VARCHAR, max_length=limit["modality"])
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("text", DataType.VARCHAR, max_length=limit["text"])
        schema.add_field("path", DataType.VARCHAR, max_length=limit["path"])
        schema.add_field("label", DataType.VARCHAR, max_length=limit["label"])
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("model_version", DataType.VARCHAR, max_length=limit["model_version"])
        schema.add_field("data_version", DataType.VARCHAR, max_length=limit["data_version"])
        bm25 = keywords and self.supports_bm25()
        if bm25:
            add_keyword_fields(schema)
        elif keywords:
            log.info("Milvus %s at %s has no BM25 function: %s gets no keyword field (vector search only)",
                     self.server_version(), safe_uri(self.uri), name)
        self.client.create_collection(name, schema=schema, consistency_level="Strong")
        if bm25:
            self.index_keywords(name)
        if props:
            self.set_properties(name, props)

    def drop(self, name: str) -> None:
        """Drop a collection that no alias points at (a dropped collection must never take an alias with it)."""
        serving = self.aliases_of(name)
        if serving:
            raise IndexStoreError(f"collection {name!r} still serves alias(es) {serving} in {safe_uri(self.uri)}: "
                                  "point them at another collection or drop them first")
        self.client.drop_collection(name)

    def dim(self, name: str) -> int:
        for f in self.client.describe_collection(name)["fields"]:
            if f["name"] == "vector":
                return int(f["params"]["dim"])
        raise IndexStoreError(f"collection {name!r} has no vector field")

    def insert(self, name: str, rows: Iterable[Mapping[str, Any]], batch: int = 1000) -> Iterator[int]:
        """Insert in batches of ``batch`` rows, yielding the count after each batch (for progress bars).

        ``rows`` may be any iterable: it is drawn one batch at a time, so a generator's rows are built as they are
        sent and at most one batch of them is held here. Every row of a batch is checked against the schema's limits
        before the batch is sent (:func:`row_problem`), on Lite as on a server; a row that does not fit, or a batch
        Milvus refuses, raises :class:`IndexStoreError` naming the row's id (the batches before it are in the
        collection: drop it).
        """
        from pymilvus.exceptions import MilvusException

        done = 0
        for chunk in _batches(rows, batch):
            for row in chunk:
                if (problem := row_problem(row)) is not None:
                    raise IndexStoreError(f"row {str(row.get('id'))[:80]!r} does not fit collection {name!r}: "
                                          f"{problem}")
            try:
                with _handled_here():
                    self.client.insert(name, chunk)
            except MilvusException as e:
                raise IndexStoreError(f"insert into {name!r} failed for the batch of rows {done + 1}-"
                                      f"{done + len(chunk)} ({_culprit(chunk, str(e))}): {_message(e)}") from e
            done += len(chunk)
            del chunk  # not held while the next batch is drawn
            yield done
        self.client.flush(name)

    def build_index(self, name: str, params: IndexParams) -> None:
        """Build the vector index of ``name``. A long build can outlive the gRPC keep-alive: pymilvus then sends
        the request again and the server answers that the index exists (the first request built it); that answer
        counts as done when the existing index is the one asked for (its type), else it is re-raised."""
        from pymilvus.exceptions import MilvusException

        index = self.client.prepare_index_params()
        index.add_index(field_name="vector", index_type=params.index_type, metric_type=params.metric_type,
                        params=dict(params.build_params))
        try:
            with _lite_lacks_timestamps():
                self.client.create_index(name, index)
        except MilvusException as e:
            if "already exist" not in str(e) or not self._has_index(name, params.index_type):
                raise

    def _has_index(self, name: str, index_type: str) -> bool:
        """Whether ``name``'s vector field has an index of ``index_type``."""
        for index_name in self.client.list_indexes(name, field_name="vector"):
            described = self.client.describe_index(name, index_name)
            if str(described.get("index_type", "")).upper() == index_type.upper():
                return True
        return False

    def load(self, name: str) -> None:
        state = str(self.client.get_load_state(name).get("state", ""))
        if "Loaded" not in state:
            self.client.load_collection(name)

    def count(self, name: str) -> int:
        res = self.client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(res[0]["count(*)"])

    def get(self, name: str, item_id: str, output_fields: Sequence[str]) -> dict[str, Any] | None:
        """The row of ``name`` whose primary key is ``item_id`` (only ``output_fields``), or ``None``. Raises
        :class:`IndexStoreError`."""
        from pymilvus.exceptions import MilvusException

        quoted = '"' + item_id.replace("\\", "\\\\").replace('"', '\\"') + '"'  # a Milvus string literal
        try:
            rows = self.client.query(name, filter=f"id == {quoted}", output_fields=list(output_fields), limit=1)
        except MilvusException as e:
            raise IndexStoreError(f"looking up item in {name!r} failed: {_message(e)}") from e
        return rows[0] if rows else None

    def search(self, name: str, vectors: Sequence[Sequence[float]], k: int, params: IndexParams,
               expr: str = "", output_fields: Sequence[str] = OUTPUT_FIELDS, consistency: str = STRONG
               ) -> list[list[dict[str, Any]]]:
        """The ``k`` nearest rows to each vector (every row when the collection holds fewer), best first.
        ``consistency``: Milvus' consistency level (:data:`STRONG`: every insert so far is seen; :data:`SERVING` for
        a published collection, which is never written again).

        The index's search depth is raised to cover ``k`` (HNSW ``ef`` >= k; IVF: all lists probed when a search
        comes back short). Raises :class:`FilterError` for an expression Milvus cannot parse (no retry helps) and
        :class:`IndexStoreError` for anything else.
        """
        from pymilvus.exceptions import MilvusException

        data = [list(map(float, v)) for v in vectors]
        search = dict(params.search_params)
        kind = params.index_type.upper()
        if kind in HNSW_TYPES:
            search["ef"] = max(int(search.get("ef", 0)), k)
        try:
            with _handled_here():
                res = self._search(name, data, k, expr, output_fields, params.metric_type, search, consistency)
                if kind in IVF_TYPES and any(len(h) < k for h in res):  # the probed lists held fewer than k rows
                    res = self._probe_all(name, data, k, expr, output_fields, params, search, consistency) or res
        except MilvusException as e:
            message = _message(e)
            if expr and any(word in message.lower() for word in FILTER_WORDS):
                reason = message.strip().splitlines()[0] if message.strip() else "rejected"  # no caret diagram
                raise FilterError(f"the filter {expr!r} is not a valid Milvus expression: {reason}") from e
            raise IndexStoreError(f"search in {name!r} failed: {message}") from e
        return [[{"id": h["id"], "score": float(h["distance"]), **h.get("entity", {})} for h in hits] for hits in res]

    def _probe_all(self, name: str, data: list[list[float]], k: int, expr: str, output_fields: Sequence[str],
                   params: IndexParams, search: dict[str, Any], consistency: str) -> Any:
        """Search again probing every list: Milvus' largest ``nprobe`` (a server may hold it to ``nlist``)."""
        from pymilvus.exceptions import MilvusException

        for nprobe in (MAX_NPROBE, int(params.build_params.get("nlist", 0))):
            if nprobe > int(search.get("nprobe", 0)):
                try:
                    return self._search(name, data, k, expr, output_fields, params.metric_type,
                                        search | {"nprobe": nprobe}, consistency)
                except MilvusException as e:
                    log.debug("nprobe %d refused on %s: %s", nprobe, self.uri, _message(e))
        return None

    def _search(self, name: str, data: list[list[float]], k: int, expr: str, output_fields: Sequence[str],
                metric: str, search: dict[str, Any], consistency: str) -> Any:
        return self.client.search(name, data=data, limit=k, filter=expr, output_fields=list(output_fields),
                                  anns_field="vector", search_params={"metric_type": metric, "params": search},
                                  consistency_level=consistency)

    # --- keyword search (BM25) -----------------------------------------------------------------------------
    def server_version(self) -> str:
        """Milvus' own version string: ``v2.3.5`` for a server, ``milvus_lite-3.2.2`` for Milvus Lite."""
        if not self._version:
            self._version = str(self.client.get_server_version())
        return self._version

    def supports_bm25(self) -> bool:
        """Whether this Milvus has the BM25 function (version :data:`BM25_SINCE` or later, Lite or server)."""
        return milvus_version(self.server_version()) >= BM25_SINCE

    def has_keywords(self, name: str) -> bool:
        """Whether collection ``name`` has the keyword field and its BM25 function (created by :meth:`create`)."""
        functions = self.client.describe_collection(name).get("functions") or []
        return any(str(f.get("name")) == BM25_FUNCTION for f in functions)

    def index_keywords(self, name: str) -> None:
        """The sparse inverted index BM25 searches; built on the empty collection, it grows with every insert."""
        index = self.client.prepare_index_params()
        index.add_index(field_name=KEYWORD_SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        with _lite_lacks_timestamps():
            self.client.create_index(name, index)

    def keyword_search(self, name: str, texts: Sequence[str], k: int, expr: str = "",
                       output_fields: Sequence[str] = OUTPUT_FIELDS, consistency: str = STRONG
                       ) -> list[list[dict[str, Any]]]:
        """The ``k`` rows whose keyword field best matches each text by BM25, best first; rows sharing no word
        with a text are not returned (a list may be shorter than ``k``, or empty). Each hit's ``score`` is its BM25
        score (>= 0). Raises :class:`SearchModeUnavailable` (naming the server version) where the collection has no
        keyword field, :class:`FilterError` for a filter Milvus cannot parse, :class:`IndexStoreError` otherwise."""
        from pymilvus.exceptions import MilvusException

        self.require_keywords(name)
        try:
            with _handled_here():
                res = self.client.search(name, data=[str(t) for t in texts], anns_field=KEYWORD_SPARSE, limit=k,
                                         filter=expr, output_fields=list(output_fields),
                                         search_params={"metric_type": "BM25"}, consistency_level=consistency)
        except MilvusException as e:
            message = _message(e)
            if expr and any(word in message.lower() for word in FILTER_WORDS):
                raise FilterError(f"the filter {expr!r} is not a valid Milvus expression: "
                                  f"{message.strip().splitlines()[0] if message.strip() else 'rejected'}") from e
            raise IndexStoreError(f"keyword search in {name!r} failed: {message}") from e
        return [[{"id": h["id"], "score": abs(float(h["distance"])), **h.get("entity", {})} for h in hits]
                for hits in res]

    def require_keywords(self, name: str) -> None:
        """Raise :class:`SearchModeUnavailable` unless collection ``name`` can be searched by keyword."""
        if self.has_keywords(name):
            return
        version = self.server_version()
        if not self.supports_bm25():
            raise SearchModeUnavailable(
                f"keyword and hybrid search need Milvus' BM25 function (Milvus {'.'.join(map(str, BM25_SINCE))} or "
                f"later); the Milvus at {safe_uri(self.uri)} is version {version}: use mode 'vector' or a newer "
                "server")
        raise SearchModeUnavailable(f"collection {name!r} on Milvus {version} has no keyword field (published "
                                    "before keyword search, or without it): a collection is rebuilt only for a new "
                                    "model or data version, so train or ingest one and publish it, or use mode "
                                    "'vector'")


def add_keyword_fields(schema: Any) -> None:
    """Add to a pymilvus collection ``schema`` the ``keywords`` field, analysed by Milvus' standard analyzer (words
    split on spaces and punctuation, lower-cased; no stemming), empty by default so rows without it insert; its
    sparse BM25 field; and the BM25 function that fills the second from the first."""
    from pymilvus import DataType, Function, FunctionType

    schema.add_field(KEYWORDS, DataType.VARCHAR, max_length=MAX_VARCHAR, enable_analyzer=True,
                     analyzer_params={"type": "standard"}, default_value="")
    schema.add_field(KEYWORD_SPARSE, DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(Function(name=BM25_FUNCTION, function_type=FunctionType.BM25, input_field_names=[KEYWORDS],
                                 output_field_names=[KEYWORD_SPARSE]))


def milvus_version(version: str) -> tuple[int, int]:
    """(major, minor) of a Milvus version string (``v2.3.5``, ``milvus_lite-3.2.2``, ``2.5.0-beta``); (0, 0) when
    it has none."""
    import re

    found = re.search(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def keyword_text(text: str, label: str, metadata: Mapping[str, Any], fields: Sequence[str]) -> str:
    """What the keyword field of an item holds: each of ``fields`` ("text": its captions, one a line; "label";
    "metadata.<key>": that metadata value, a list's items one a line) that the item has, one a line, cut to the
    field's :data:`~mmretrieval.core.schema.MAX_VARCHAR` bytes."""
    parts: list[str] = []
    for source in fields:
        if source == "text":
            parts.extend(split_captions(text or ""))
        elif source == "label":
            parts.append(str(label or ""))
        else:
            value = metadata.get(source.removeprefix("metadata."))
            values = value if isinstance(value, list) else [value]
            parts.extend(str(v) for v in values if v is not None and not isinstance(v, (dict, bool)))
    return clip_utf8("\n".join(p.strip() for p in parts if p and p.strip()), MAX_VARCHAR)


def with_keywords(rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Each collection row with its keyword text (:func:`keyword_text` of ``index.keyword_fields``), set as the row
    is drawn (publish's rows stay a stream)."""
    for row in rows:
        row[KEYWORDS] = keyword_text(row.get("text") or "", row.get("label") or "", row.get("metadata") or {}, fields)
        yield row


class _ThisThread(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


@contextlib.contextmanager
def _handled_here() -> Iterator[None]:
    """pymilvus logs every failed call with a traceback (logger :data:`RPC_LOGGER`, ERROR) before raising it. Around
    a call whose ``MilvusException`` this module handles (an expected miss such as an alias that does not exist yet,
    or an error re-raised as ours with Milvus' message), those records of this thread are dropped; the filter comes
    off after the call, so pymilvus logs as configured everywhere else (its level is never changed here)."""
    logger = logging.getLogger(RPC_LOGGER)
    mine = _ThisThread()
    logger.addFilter(mine)
    try:
        yield
    finally:
        logger.removeFilter(mine)


class _LiteAllocTimestampNoise(logging.Filter):
    """Drops gRPC's record of a call Milvus Lite's server lacks: a ``NotImplementedError`` whose text is gRPC's
    own "Method not implemented!" (the wording grpc's generated servicers raise; nothing of ours is unfinished)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NotImplementedError) and "Method not implemented" in str(error))


@contextlib.contextmanager
def _lite_lacks_timestamps() -> Iterator[None]:
    """``create_index`` waits for the index with an ``AllocTimestamp`` call that Milvus Lite's in-process gRPC server
    does not implement; pymilvus copes, but the server logs "Exception calling application: Method not
    implemented!" with a traceback (logger ``grpc._server``, from its own thread). That one kind of record is
    dropped for the duration of the call; the filter comes off after it."""
    logger = logging.getLogger("grpc._server")
    quiet = _LiteAllocTimestampNoise()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def row_problem(row: Mapping[str, Any]) -> str | None:
    """Why ``row`` does not fit the collection schema (``None`` if it does): a string field longer than its
    :data:`VARCHAR_LIMITS` in UTF-8 bytes, a NUL character in a string, metadata above :data:`JSON_MAX_BYTES`."""
    for field_name, limit in VARCHAR_LIMITS.items():
        value = row.get(field_name)
        if field_name == "text" and isinstance(value, str):
            value = clip_utf8(value, limit)  # insert() cuts the display copy of the captions
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            return f"field {field_name!r} contains a NUL character"
        size = len(value.encode("utf-8"))
        if size > limit:
            return f"field {field_name!r} is {size} bytes, above its {limit}-byte limit"
    if "metadata" in row:
        size = len(json.dumps(row["metadata"], ensure_ascii=False).encode("utf-8"))
        if size > JSON_MAX_BYTES:
            return f"metadata is {size} bytes of JSON, above the {JSON_MAX_BYTES}-byte limit"
        if "\\u0000" in json.dumps(row["metadata"]):
            return "metadata contains a NUL character"
    return None


def _culprit(chunk: Sequence[Mapping[str, Any]], message: str) -> str:
    """The id of the row a Milvus error is about, where the message lets us tell; else the batch's first and last."""
    for row in chunk:
        rid = str(row.get("id", ""))
        if rid and rid[:40] in message:
            return f"row {rid[:80]!r}"
    return f"ids {str(chunk[0].get('id'))[:80]!r} .. {str(chunk[-1].get('id'))[:80]!r}"


def safe_uri(uri: str) -> str:
    """A Milvus URI fit for messages and logs: no ``user:password@`` part, a Lite file by its name only."""
    if "://" not in uri:
        return Path(uri).name
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def _message(error: Exception) -> str:
    return str(getattr(error, "message", None) or error)
