"""Thumbnails of image items, made from their clean media and found by the item's id (never by a path)."""

from __future__ import annotations

import io

from fastapi import HTTPException
from fastapi.responses import Response

from mmretrieval.core.errors import MediaError
from mmretrieval.core.settings import Settings
from mmretrieval.serving.http.state import DatasetState

THUMB_SIDE = 256  # pixels, the longer side
THUMB_CACHE = 4096  # thumbnails kept per dataset (the oldest goes first)


def thumbnail(settings: Settings, state: DatasetState, item_id: str) -> Response:
    """A JPEG thumbnail of an image item of the serving collection (cached; 404: no such image item)."""
    collection = state.serving.get("collection") or state.client.index.require_alias(state.client.alias)
    key = (collection, item_id)
    with state.thumbs_lock:
        cached = state.thumbs.get(key, b"")
    data = make_thumbnail(settings, state, collection, item_id) if cached == b"" else cached
    with state.thumbs_lock:
        while len(state.thumbs) >= THUMB_CACHE:
            state.thumbs.pop(next(iter(state.thumbs)))
        state.thumbs[key] = data
    if data is None:
        raise HTTPException(404, "no image item with this id in the serving collection")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def make_thumbnail(settings: Settings, state: DatasetState, collection: str, item_id: str) -> bytes | None:
    """A JPEG of an image item's clean media, or ``None`` when there is no such image item."""
    from mmretrieval.media.files import path_problem
    from mmretrieval.media.image import open_image

    row = state.client.index.get(collection, item_id, ["modality", "metadata"])
    if row is None or row.get("modality") != "image":
        return None
    rel = str((row.get("metadata") or {}).get("clean_media") or "")
    root = settings.layout(state.name).clean
    if not rel or path_problem(rel, root) is not None:
        return None
    try:
        im = open_image(root / rel, settings.params_for(state.name).validate.max_image_pixels)
    except MediaError:
        return None
    im.thumbnail((THUMB_SIDE, THUMB_SIDE))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=85)
    return out.getvalue()
