"""Request and response models of the HTTP service, their limits, and the documented error statuses."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from mmretrieval.serving.client import MAX_K, MAX_TEXT

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff")
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac",
               "audio/ogg", "audio/mpeg")
MAX_REQUEST_FILTER_CHARS = 2000  # characters of a filter expression
MAX_FILTER_TERMS = 64  # comparisons and boolean operators in a filter
MAX_FILTER_DEPTH = 16  # nested parentheses and brackets
MAX_REQUEST_LABELS = 100
MAX_WHERE = 16
MAX_WHERE_FORM = 4000  # characters of the upload form's `where` (a JSON object)
MAX_ITEM_ID = 256
WHERE_KEY = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
UPLOAD_FIELDS = frozenset({"file", "text", "k", "modality", "fusion", "filter", "labels", "where",
                           "min_confidence"})  # its form
Modality = Literal["text", "image", "audio", "video"]
Fusion = Literal["vector", "late"]
SearchMode = Literal["vector", "keyword", "hybrid"]  # mmretrieval.serving.hybrid.SEARCH_MODES


def _no_surrogates(value: str) -> str:
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValueError("contains a lone surrogate (not valid Unicode text)")
    return value


def _where_keys(value: dict[str, str]) -> dict[str, str]:
    if bad := [k for k in value if not re.fullmatch(WHERE_KEY, k)]:
        raise ValueError(f"{len(bad)} metadata key(s) are not letters, digits and _ (at most 64)")
    return value


def _not_bool(value: Any) -> Any:
    """JSON ``true``/``false`` are not integers (pydantic would read them as 1/0); 39.0 still is one. (Range
    constraints go before this validator in an ``Annotated``, or pydantic leaves them out of the JSON schema.)"""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    return value


Text = Annotated[str, AfterValidator(_no_surrogates)]
Int = Annotated[int, BeforeValidator(_not_bool)]
Label = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_surrogates)]
WhereValue = Annotated[str, Field(max_length=200), AfterValidator(_no_surrogates)]
ItemId = Annotated[str, PathParam(min_length=1, max_length=MAX_ITEM_ID, pattern=r"^[^\x00-\x1f\x7f]+$",
                                  description="the item's id (no control characters)")]

NO_GOOD_MATCH = "X-No-Good-Match"  # response header of the search routes: true | false
MIN_CONFIDENCE_DOC = (
    "the `no_good_match` threshold (0..1) for this request: the search answers with the header "
    f"`{NO_GOOD_MATCH}: true` when the best hit's `confidence` is below it; omitted: the dataset's "
    "`calibration.min_confidence`")
MinConfidence = Annotated[Annotated[float, Field(ge=0.0, le=1.0), BeforeValidator(_not_bool)] | None,
                          Field(description=MIN_CONFIDENCE_DOC)]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[Text, Field(min_length=1, max_length=MAX_TEXT, description="text query (blank: 400)")]
    k: Int = Field(10, ge=1, le=MAX_K, description="number of hits")
    modality: Modality | None = Field(None, description="only hits of this modality")
    filter: Annotated[Text, Field(max_length=MAX_REQUEST_FILTER_CHARS, description=(
        "Milvus boolean expression over the collection's scalar fields, e.g. `label == \"7\"`; at most "
        f"{MAX_FILTER_TERMS} comparisons and operators, nested at most {MAX_FILTER_DEPTH} deep"))] = ""
    labels: list[Label] = Field(default_factory=list, max_length=MAX_REQUEST_LABELS,
                                description="only hits with one of these labels")
    where: Annotated[dict[str, WhereValue], AfterValidator(_where_keys)] = Field(
        default_factory=dict, max_length=MAX_WHERE, json_schema_extra={"propertyNames": {"pattern": WHERE_KEY}},
        description="only hits whose metadata has these key/value pairs (keys: letters, digits, _)")
    rerank: Annotated[int, Field(ge=0, le=MAX_K), BeforeValidator(_not_bool)] | None = Field(None, description=(
        "re-rank the dual encoder's top N images with the serving model's cross-attention re-ranker (N >= k; hits "
        "then carry `dual_score`); 0: off; omitted: on at the configured depth when the model has a re-ranker that "
        "passed its gate and the search is over images"))
    min_confidence: MinConfidence = None
    mode: SearchMode | None = Field(None, description=(
        "`vector`: the dual encoder's nearest items; `keyword`: BM25 over the items' captions and keyword fields "
        "(score: BM25); `hybrid`: both lists fused (reciprocal rank fusion or weighted scores, `index.hybrid`; "
        "score: the fused score). Omitted: the configured `index.search_mode`. Keyword and hybrid need a Milvus "
        "with the BM25 function (Milvus Lite, a 2.5+ server): elsewhere 400 naming the server version; they never "
        "re-rank (with `rerank` > 0: 400)"))


SEARCH_OK = {200: {"description": "the hits, best first; each hit's `confidence` is the probability that it is "
                                  "relevant (null where the collection has no score calibration)",
                   "headers": {NO_GOOD_MATCH: {
                       "description": "`true` when even the best hit is unlikely to be relevant (its confidence is "
                                      "below the threshold): show \"no good match\" rather than the hits; `false` "
                                      "otherwise, and always where the collection has no calibration",
                       "schema": {"type": "string", "enum": ["true", "false"]}}}}}


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: str = Field(description="why the request was refused or failed")
    request_id: str = Field(description="quote it when reporting a problem; the service log carries it")
    errors: list[FieldError] = Field(default_factory=list, description="the invalid fields (422 only)")


class DatasetInfo(BaseModel):
    name: str
    default: bool
    ready: bool


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    datasets: dict[str, str] = Field(description="per dataset: `ready` or the reason it is not")


DESCRIPTIONS = {
    400: "Bad request: a filter that does not parse or is too complex, an image that does not decode or whose "
         "header declares too many pixels or a side out of bounds, an empty text, an untrusted Host header",
    401: "No API key (the `X-API-Key` header) where keys are configured",
    403: "A wrong API key, or a cross-origin request from an origin that is not allowed",
    404: "Nothing there: no published collection behind the dataset's alias, or no such item",
    413: "The request body or the uploaded file is larger than the limit (checked from Content-Length and while "
         "streaming)",
    415: "The uploaded file's content type is not one of the supported image or audio types",
    422: "The request does not match the schema (type, range, length, unknown field, invalid Unicode)",
    500: "An unexpected error; quote the request_id",
    503: "Not ready (model or collection not loaded, Milvus unavailable) or too busy (too many connections, requests "
         "in flight, searches or image decodes waiting); retry after the `Retry-After` header's seconds",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that may answer ``codes`` (and 400, 413, 500 and 503, which any route
    may: 503 with a ``Retry-After`` header)."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code], **(RETRY_AFTER if code == 503 else {})}
            for code in sorted({*codes, 400, 413, 500, 503})}


RETRY_AFTER = {"headers": {"Retry-After": {"description": "seconds to wait before retrying",
                                           "schema": {"type": "integer"}}}}
