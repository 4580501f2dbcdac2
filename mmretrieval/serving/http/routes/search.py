"""Searching a dataset: by text (JSON) and by an uploaded image or audio clip (multipart, optionally with text)."""

from __future__ import annotations

import json
import re

from fastapi import HTTPException, Request, Response, UploadFile

from mmretrieval.serving.client import Hit, SearchHits
from mmretrieval.serving.http.checks import filter_problem, image_header_problem
from mmretrieval.serving.http.schemas import (
    AUDIO_TYPES,
    IMAGE_TYPES,
    MAX_WHERE,
    NO_GOOD_MATCH,
    UPLOAD_FIELDS,
    WHERE_KEY,
    SearchRequest,
)
from mmretrieval.serving.http.state import DatasetState, Service


def search(service: Service, state: DatasetState, req: SearchRequest) -> list[Hit]:
    """Nearest items to a text query (400: a filter too complex to run)."""
    check_filter(req.filter)
    return service.search(state, text=req.text, k=req.k, modality=req.modality, filter=req.filter,
                          labels=req.labels, where=req.where, rerank=req.rerank, min_confidence=req.min_confidence,
                          mode=req.mode)


def flagged(response: Response, hits: list[Hit]) -> list[Hit]:
    """``hits`` unchanged, with the :data:`~mmretrieval.serving.http.schemas.NO_GOOD_MATCH` header saying whether
    even the best of them is unlikely to be relevant (:class:`~mmretrieval.serving.client.SearchHits`)."""
    response.headers[NO_GOOD_MATCH] = "true" if getattr(hits, "no_good_match", False) else "false"
    return list(hits) if isinstance(hits, SearchHits) else hits


def upload(service: Service, state: DatasetState, file: UploadFile, text: str | None, k: int, modality: str | None,
           fusion: str, filter: str, labels: list[str], where: str, min_confidence: float | None = None
           ) -> list[Hit]:
    """Nearest items to an uploaded image or audio clip (optionally fused with ``text``), checked in this order:
    415 content type, 400 filter, 400 ``where`` (a JSON object), 413 file size, 400 empty file, 400 image header."""
    ctype = (file.content_type or "").split(";", 1)[0].strip().lower()
    if ctype not in IMAGE_TYPES + AUDIO_TYPES:
        raise HTTPException(415, f"content type {ctype[:80]!r} is not supported; use an image {IMAGE_TYPES} "
                                 f"or audio {AUDIO_TYPES} type")
    check_filter(filter)
    where_map = parse_where(where)
    limit = service.config.max_upload_bytes
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the uploaded file is larger than {limit} bytes")
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    query = dict(text=text, k=k, modality=modality, fusion=fusion, filter=filter, labels=labels, where=where_map,
                 min_confidence=min_confidence)
    if ctype in AUDIO_TYPES:
        return service.search(state, audio=data, **query)
    vp = service.settings.params_for(state.name).validate
    if problem := image_header_problem(data, vp.max_image_pixels, vp.min_image_side, service.config.max_aspect):
        raise HTTPException(400, problem)
    return service.search(state, image=data, **query)


def check_filter(expr: str) -> None:
    if (problem := filter_problem(expr)) is not None:
        raise HTTPException(400, problem)


def parse_where(where: str) -> dict[str, str]:
    """The upload form's ``where``: a JSON object of at most ``MAX_WHERE`` metadata keys to strings (400 else)."""
    try:
        where_map = json.loads(where) if where.strip() else {}
        valid = isinstance(where_map, dict) and len(where_map) <= MAX_WHERE and all(
            isinstance(v, str) and re.fullmatch(WHERE_KEY, k) and len(v) <= 200 for k, v in where_map.items())
    except (ValueError, RecursionError):  # RecursionError: brackets nested past the JSON decoder's depth
        valid = False
    if not valid:
        raise HTTPException(400, f"`where` must be a JSON object of at most {MAX_WHERE} metadata keys "
                                 "(letters, digits, _) to string values")
    return where_map


async def upload_fields(request: Request) -> None:
    """Refuse form fields the upload route does not know, and a second value of a single-valued field (the
    JSON route refuses unknown keys the same way); the form is parsed once, FastAPI reuses it."""
    try:
        form = await request.form()
    except Exception:  # an unparsable body: the route's own validation answers it with its 4xx
        return
    names = list(form.keys())
    unknown = sorted(set(names) - UPLOAD_FIELDS)
    if unknown:
        raise HTTPException(400, f"unknown form field(s) {[u[:40] for u in unknown[:5]]}; the upload form takes "
                                 f"{sorted(UPLOAD_FIELDS)}")
    repeated = sorted({n for n in names if n != "labels" and len(form.getlist(n)) > 1})
    if repeated:
        raise HTTPException(400, f"form field(s) {repeated} given more than once; only `labels` repeats")
