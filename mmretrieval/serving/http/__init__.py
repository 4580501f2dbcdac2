"""HTTP service (FastAPI): ``mmr serve``. One process serves one or more datasets.

Routes (``{name}`` is one of the served datasets; the routes without ``/datasets/{name}`` use the first one):

* ``GET /`` the search page (static files shipped in the package, no CDN); ``GET /openapi.json`` the OpenAPI
  description (``/docs`` and ``/redoc``, which load JavaScript from a CDN, only with ``MMR_API_DOCS=1``);
* ``GET /health/live`` (the process answers), ``GET /health/ready`` (every dataset's model loaded and a probe query
  answered; 503 otherwise), ``GET /metrics`` (Prometheus text format);
* ``GET /datasets``; ``GET [/datasets/{name}]/info``; ``POST [/datasets/{name}]/search`` (JSON);
  ``POST [/datasets/{name}]/search/upload`` (multipart image or audio, optional text to fuse);
  ``GET [/datasets/{name}]/items/{item_id}/thumbnail`` (a JPEG made from the item's clean media, found by its id).

Safe by default (:class:`ServiceConfig`): limits are checked before any work (Content-Length, a streaming cap on the
body, text and filter sizes, the image header's pixel count and sides); decoding and the model run in worker threads
with a bound on concurrent searches, so the event loop stays free for health checks; every refusal is a 4xx with a
``detail`` reason and a ``request_id``; an unexpected error is a 500 with the ``request_id`` that its log line carries.
Optional API keys (``X-API-Key``), a trusted-hosts list, and CORS off by default (a cross-origin request is refused
unless its origin is allowed). Secrets and absolute paths are removed from every message the service returns or logs.

The service owns its Milvus connection for its lifetime. With a Milvus Lite file that means one process per file:
publish while serving needs a Milvus server URI (see README, "Scaling out").

The package, one job per module: ``config`` (:class:`ServiceConfig` from ``MMR_*`` variables), ``schemas``
(request and response models, limits, documented statuses), ``checks`` (filter complexity, image headers),
``guards`` (the middleware), ``errors`` (the error body and exception handlers), ``redaction``, ``metrics``,
``state`` (what the routes share), ``dependencies`` (the service, the dataset, the API key), ``routes/`` (the
``APIRouter``s) and ``app`` (:func:`create_app`, :func:`serve`); ``static/`` holds the search page.
"""

from mmretrieval.serving.http.app import create_app, is_loopback, port_problem, serve
from mmretrieval.serving.http.checks import filter_problem, image_header_problem
from mmretrieval.serving.http.config import LOOPBACK, ServiceConfig
from mmretrieval.serving.http.redaction import RedactingFilter, Redactor
from mmretrieval.serving.http.schemas import UPLOAD_FIELDS

__all__ = ["LOOPBACK", "UPLOAD_FIELDS", "RedactingFilter", "Redactor", "ServiceConfig", "create_app",
           "filter_problem", "image_header_problem", "is_loopback", "port_problem", "serve"]
