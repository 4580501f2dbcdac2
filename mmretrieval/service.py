"""HTTP service (FastAPI): ``mmr serve``. Endpoints: ``/health``, ``/info``, ``/search`` (JSON), ``/search/upload``
(multipart image or audio upload, optional text to fuse). OpenAPI at ``/docs``. Errors are 4xx with a ``detail`` reason.

The service owns its Milvus connection for its lifetime. With a Milvus Lite file that means one process per file:
publish while serving needs a Milvus server URI (see README, "Scaling out").
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from mmretrieval.client import MAX_K, MAX_TEXT, Hit, RetrievalClient
from mmretrieval.config import Settings, get_settings
from mmretrieval.errors import AliasNotFoundError, MediaError, MMRError, QueryError
from mmretrieval.filters import parse_where
from mmretrieval.media import open_image

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff")
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/x-flac", "audio/ogg", "audio/mpeg")


class SearchRequest(BaseModel):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT, description="text query")
    k: int = Field(10, ge=1, le=MAX_K)
    modality: str | None = Field(None, description="only hits of this modality")
    filter: str = Field("", description="raw Milvus boolean expression, combined with the others by `and`")
    labels: list[str] = Field(default_factory=list, description="only hits with one of these labels")
    where: dict[str, str] = Field(default_factory=dict, description="only hits whose metadata has key == value")


def create_app(dataset: str, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    client = RetrievalClient(dataset, settings=settings)
    app = FastAPI(title="mmretrieval", version="0.1.0",
                  description=f"Multimodal search over the serving alias of dataset {dataset!r}.")

    @app.exception_handler(MMRError)
    async def mmr_error(_: Any, exc: MMRError) -> JSONResponse:
        status = 404 if isinstance(exc, AliasNotFoundError) else 400 if isinstance(exc, (QueryError, MediaError)) \
            else 503
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    @app.on_event("shutdown")
    def close() -> None:
        client.close()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def info() -> dict[str, Any]:
        return client.info()

    @app.post("/search", response_model=list[Hit])
    def search(req: SearchRequest) -> list[Hit]:
        return client.search(text=req.text, k=req.k, modality=req.modality, filter=req.filter, labels=req.labels,
                             where=req.where)

    @app.post("/search/upload", response_model=list[Hit])
    async def search_upload(file: UploadFile = File(...), text: str | None = Form(None),  # noqa: B008
                            k: int = Form(10), modality: str | None = Form(None),
                            fusion: str = Form("vector"), filter: str = Form(""),
                            label: list[str] | None = Form(None),  # noqa: B008 - FastAPI form fields
                            where: list[str] | None = Form(None)) -> list[Hit]:  # noqa: B008 - "key=value" items
        if file.content_type not in IMAGE_TYPES + AUDIO_TYPES:
            raise HTTPException(415, f"content type {file.content_type!r} is not supported; use an image "
                                     f"{IMAGE_TYPES} or audio {AUDIO_TYPES} type")
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"upload is larger than {MAX_UPLOAD_BYTES} bytes")
        if not data:
            raise HTTPException(400, "the uploaded file is empty")
        restrict: dict[str, Any] = {"modality": modality, "filter": filter, "labels": label or [],
                                    "where": parse_where(where or [])}
        if file.content_type in AUDIO_TYPES:
            return client.search(text=text, audio=data, k=k, fusion=fusion, **restrict)
        # the one decoder, as for every other entry point (bit depth, transparency, EXIF orientation, size limits)
        return client.search(text=text, image=open_image(data), k=k, fusion=fusion, **restrict)

    return app


def serve(dataset: str, host: str = "127.0.0.1", port: int = 8000, settings: Settings | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(dataset, settings), host=host, port=port, log_level="info")
