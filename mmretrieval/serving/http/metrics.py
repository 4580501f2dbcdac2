"""The service's Prometheus metrics, in a registry of the application's own (nothing process-wide)."""

from __future__ import annotations


class Metrics:
    """Request counts, latency histograms and errors by route and status; what each dataset serves; readiness;
    searches in flight. Rendered in the Prometheus text format by ``GET /metrics``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mmr_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.errors = Counter("mmr_http_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=self.registry)
        self.latency = Histogram("mmr_http_request_duration_seconds", "time to answer, by route",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.serving = Gauge("mmr_serving_info", "the collection, model and data version each dataset serves (1)",
                             ["dataset", "collection", "model", "model_version", "data_version"],
                             registry=self.registry)
        self.ready = Gauge("mmr_dataset_ready", "1 when the dataset's model is loaded and a probe query answered",
                           ["dataset"], registry=self.registry)
        self.in_flight = Gauge("mmr_searches_in_flight", "searches running now (decode + model + Milvus)",
                               registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (``route``: the route's path template) and its latency in seconds."""
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
