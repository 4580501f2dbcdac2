"""Monitoring: liveness and readiness (no API key) and the Prometheus metrics (behind the API key, if any)."""

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from mmretrieval.serving.http.dependencies import ServiceDep
from mmretrieval.serving.http.schemas import Readiness, errors

REPROBE_SECONDS = 2.0  # a not-ready dataset is probed again by /health/ready at most this often

router = APIRouter()  # no API key
metrics_router = APIRouter()  # behind the API key, where one is configured


@router.get("/health/live", responses=errors(403))
async def live() -> dict[str, str]:
    """The process answers (never touches the model or Milvus)."""
    return {"status": "ok"}


@router.get("/health", responses=errors(403), deprecated=True)
async def health() -> dict[str, str]:
    """Same as /health/live."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=Readiness,
            responses={**errors(403), 503: {"model": Readiness, "description": "some dataset is not ready"}})
async def ready(service: ServiceDep) -> JSONResponse:
    """Every dataset's model loaded and a probe query answered (a not-ready dataset is probed again)."""
    from starlette.concurrency import run_in_threadpool

    for state in list(service.states.values()):
        if not state.ready and time.monotonic() - state.probed_at > REPROBE_SECONDS:
            await run_in_threadpool(service.probe, state)
    states = service.states
    ok = bool(states) and all(s.ready for s in states.values())
    body = {"status": "ready" if ok else "not ready",
            "datasets": {n: (states[n].reason if n in states else "not loaded") for n in service.names}}
    return JSONResponse(body, status_code=200 if ok else 503)


@metrics_router.get("/metrics", response_class=Response,
                    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def prometheus(service: ServiceDep) -> Response:
    """Request counts, latency histograms, errors by status, the serving collection and model version."""
    body, ctype = service.metrics.render()
    return Response(body, media_type=ctype)
