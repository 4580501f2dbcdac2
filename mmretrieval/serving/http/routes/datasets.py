"""The routes of a dataset (info, search, search by upload, thumbnails) and the list of served datasets.

:func:`dataset_routes` is included twice: for the default dataset at the root, and under ``/datasets/{name}``.
(No ``from __future__ import annotations``: FastAPI reads the handlers' signatures at runtime.)
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from mmretrieval.serving.client import MAX_K, MAX_TEXT, Hit
from mmretrieval.serving.http.dependencies import ServiceDep
from mmretrieval.serving.http.routes import items, search
from mmretrieval.serving.http.schemas import (
    MAX_REQUEST_FILTER_CHARS,
    MAX_REQUEST_LABELS,
    MAX_WHERE_FORM,
    MIN_CONFIDENCE_DOC,
    SEARCH_OK,
    DatasetInfo,
    Fusion,
    ItemId,
    Label,
    SearchRequest,
    Text,
    errors,
)
from mmretrieval.serving.http.state import DatasetState

router = APIRouter()
JPEG = {200: {"content": {"image/jpeg": {}}, "description": "a JPEG thumbnail"}}


@router.get("/datasets", response_model=list[DatasetInfo])
def list_datasets(service: ServiceDep) -> list[DatasetInfo]:
    """The served datasets (the first is the default)."""
    return [DatasetInfo(name=n, default=i == 0, ready=service.states[n].ready if n in service.states else False)
            for i, n in enumerate(service.names)]


def dataset_routes(resolve: Callable[..., DatasetState], op: str = "") -> APIRouter:
    """The routes of the dataset that the dependency ``resolve`` gives; ``op`` prefixes their operation ids."""
    routes = APIRouter()
    Dataset = Annotated[DatasetState, Depends(resolve)]

    @routes.get("/info", operation_id=f"{op}info", responses=errors(404, 503))
    def info_route(state: Dataset) -> dict[str, Any]:
        """What the serving alias points to: collection, model and data version, rows."""
        return state.client.info()

    @routes.post("/search", response_model=list[Hit], operation_id=f"{op}search",
                 responses={**SEARCH_OK, **errors(404, 422, 503)})
    def search_route(req: SearchRequest, state: Dataset, service: ServiceDep, response: Response) -> list[Hit]:
        """Nearest items to a text query."""
        return search.flagged(response, search.search(service, state, req))

    @routes.post("/search/upload", response_model=list[Hit], dependencies=[Depends(search.upload_fields)],
                 operation_id=f"{op}search_upload", responses={**SEARCH_OK, **errors(404, 415, 422, 503)})
    def upload_route(file: Annotated[UploadFile, File(description="an image or audio file")],
                     state: Dataset, service: ServiceDep, response: Response,
                     text: Annotated[Text | None, Form(min_length=1, max_length=MAX_TEXT,
                                                       description="text to fuse with the file")] = None,
                     k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
                     modality: Annotated[Literal["text", "image", "audio", "video", ""], Form(
                         description="only hits of this modality; empty: any")] = "",
                     fusion: Annotated[Fusion, Form()] = "vector",
                     filter: Annotated[Text, Form(max_length=MAX_REQUEST_FILTER_CHARS)] = "",
                     labels: Annotated[list[Label], Form(max_length=MAX_REQUEST_LABELS)] = [],  # noqa: B006
                     where: Annotated[Text, Form(max_length=MAX_WHERE_FORM, description="JSON object of metadata "
                                                 "key/value pairs")] = "",
                     min_confidence: Annotated[float, Form(ge=0.0, le=1.0, description=MIN_CONFIDENCE_DOC)
                                               ] = None,  # type: ignore[assignment]  # absent: None (no "null")
                     ) -> list[Hit]:
        """Nearest items to an uploaded image or audio clip (optionally fused with a text)."""
        return search.flagged(response, search.upload(service, state, file, text, k, modality or None, fusion,
                                                      filter, labels, where, min_confidence))

    @routes.get("/items/{item_id}/thumbnail", operation_id=f"{op}thumbnail", response_class=Response,
                responses={**JPEG, **errors(404, 422, 503)})
    def thumbnail_route(item_id: ItemId, state: Dataset, service: ServiceDep) -> Response:
        """A thumbnail of an image item, made from its clean media (found by the item's id)."""
        return items.thumbnail(service.settings, state, item_id)

    return routes
