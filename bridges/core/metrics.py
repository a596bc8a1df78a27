"""Prometheus metrics (served at /metrics when ``metrics.enabled``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.remote_messages = Counter("caliopen_remote_messages_total", "Remote messages bridged to Matrix",
                                       ["network"], registry=self.registry)
        self.remote_failures = Counter("caliopen_remote_failures_total", "Remote events that failed to bridge",
                                       ["network"], registry=self.registry)
        self.matrix_messages = Counter("caliopen_matrix_messages_total", "Matrix messages sent to networks",
                                       ["network"], registry=self.registry)
        self.matrix_failures = Counter("caliopen_matrix_failures_total", "Matrix messages networks refused",
                                       ["network"], registry=self.registry)
        self.logins = Gauge("caliopen_logins", "Logins by network and state", ["network", "state"],
                            registry=self.registry)
        self.inbox = Gauge("caliopen_inbox_pending", "Remote events waiting to be bridged", registry=self.registry)


METRICS = _Metrics()
