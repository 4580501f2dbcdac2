"""What every route shares: the served datasets' states, the settings and configuration, the metrics, the redactor,
and the bounded search slots (one :class:`Service` per application, as ``app.state.service``)."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException

from mmretrieval.core.errors import MediaError, MMRError, QueryError
from mmretrieval.core.settings import Settings
from mmretrieval.serving.client import Hit, RetrievalClient
from mmretrieval.serving.http.config import ServiceConfig
from mmretrieval.serving.http.metrics import Metrics
from mmretrieval.serving.http.redaction import Redactor

log = logging.getLogger(__name__)
SERVING_KEYS = ("collection", "model", "model_version", "data_version")


@dataclass
class DatasetState:
    """One served dataset: its client, whether it answered a probe query (or why not), what it serves, and its
    thumbnail cache ((collection, item id) -> JPEG bytes, or ``None`` for no such image item)."""

    name: str
    client: RetrievalClient
    ready: bool = False
    reason: str = "not loaded yet"
    serving: dict[str, str] = field(default_factory=dict)
    thumbs: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    thumbs_lock: threading.Lock = field(default_factory=threading.Lock)
    probed_at: float = 0.0  # time.monotonic() of the last probe


class Service:
    """The served ``names`` (the first is the default) and what their routes share. Nothing is loaded until
    :meth:`start` (the application's lifespan)."""

    def __init__(self, names: Sequence[str], settings: Settings, config: ServiceConfig) -> None:
        self.names = list(names)
        self.settings = settings
        self.config = config
        self.redact = Redactor.for_settings(settings, config)
        self.metrics = Metrics()
        self.states: dict[str, DatasetState] = {}
        self.slots = threading.BoundedSemaphore(config.max_concurrent_searches)
        self.decodes = threading.BoundedSemaphore(config.max_concurrent_decodes)
        self.probe_lock = threading.Lock()

    async def start(self) -> None:
        """Open a client per dataset and probe it (in a worker thread); a dataset that fails is not ready."""
        from starlette.concurrency import run_in_threadpool

        for name in self.names:
            self.states[name] = DatasetState(name, RetrievalClient(name, settings=self.settings))
            await run_in_threadpool(self.probe, self.states[name])
            log.info("dataset %s: %s %s", name, self.states[name].reason, self.states[name].serving)

    def stop(self) -> None:
        for state in self.states.values():
            state.client.close()
        self.states.clear()

    def state(self, name: str) -> DatasetState:
        """The state of a served dataset; HTTP 503 while it is not loaded."""
        if name not in self.states:
            raise HTTPException(503, f"dataset {name!r} is not loaded yet")
        return self.states[name]

    def probe(self, state: DatasetState) -> None:
        """Load the model and collection and answer one query; record why not when that fails."""
        with self.probe_lock:
            state.probed_at = time.monotonic()
            try:
                info = state.client.info()
                state.client.search(text="probe", k=1)
            except Exception as e:  # noqa: BLE001 - any failure means not ready, never a service that cannot start
                state.ready, state.reason = False, self.redact(str(e) if isinstance(e, MMRError) else
                                                               f"{type(e).__name__}: {e}")
                log.warning("dataset %s is not ready: %s", state.name, state.reason)
            else:
                state.ready, state.reason = True, "ready"
                state.serving = {k: str(info.get(k) or "") for k in SERVING_KEYS}
                self.metrics.serving.clear()
                for s in self.states.values():
                    if s.serving:
                        self.metrics.serving.labels(s.name, *s.serving.values()).set(1)
            self.metrics.ready.labels(state.name).set(int(state.ready))

    def decode(self, state: DatasetState, data: bytes) -> Any:
        """Uploaded image bytes -> the RGB PIL image the model needs (decoded at no more than twice its input side,
        :func:`~mmretrieval.media.image.open_image`), holding one of ``max_concurrent_decodes`` slots: HTTP 503
        (with Retry-After) after ``queue_seconds`` without one. Free heap memory goes back to the system after a
        large image (:func:`~mmretrieval.serving.http.memory.trim`)."""
        from mmretrieval.media.image import open_image
        from mmretrieval.serving.http.memory import LARGE_PIXELS, trim

        side = state.client.query_image_side()
        if not self.decodes.acquire(timeout=self.config.queue_seconds):
            raise HTTPException(503, "too many images being decoded at once; retry later", headers={"Retry-After": "1"})
        large = declared_pixels(data) > LARGE_PIXELS
        try:
            return open_image(data, self.settings.params_for(state.name).validate.max_image_pixels, max_side=2 * side)
        finally:
            self.decodes.release()
            if large:
                trim()

    def search(self, state: DatasetState, **kwargs: Any) -> list[Hit]:
        """One search (``RetrievalClient.search`` arguments) holding one of the bounded slots, in the caller's
        worker thread: HTTP 503 after ``queue_seconds`` without a slot; a failure of the store marks the dataset
        not ready (a not-ready dataset is probed again after a search)."""
        if not self.slots.acquire(timeout=self.config.queue_seconds):
            raise HTTPException(503, "too many searches at once; retry later", headers={"Retry-After": "1"})
        self.metrics.in_flight.inc()
        try:
            if isinstance(kwargs.get("image"), (bytes, bytearray)):
                kwargs["image"] = self.decode(state, kwargs.pop("image"))
            hits = state.client.search(**kwargs)
        except (QueryError, MediaError):
            raise
        except MMRError as e:
            state.ready, state.reason = False, self.redact(str(e))
            self.metrics.ready.labels(state.name).set(0)
            raise
        finally:
            self.metrics.in_flight.dec()
            self.slots.release()
        if not state.ready:
            self.probe(state)
        return hits


def declared_pixels(data: bytes) -> int:
    """Width x height as an image's header declares them (0 for bytes Pillow cannot identify)."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                return int(header.size[0] * header.size[1])
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 0
