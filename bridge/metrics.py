"""Prometheus metrics for the runsheet's alerts, in a registry owned by one app.

A registry per application (not the process-global default) keeps two bridges in one test
process from sharing counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
_STORE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2000)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.tool_calls = Counter(
            "lighthouse_tool_calls",
            "MCP tool calls by tool and outcome",
            ["tool", "outcome"],
            registry=r,
        )
        self.mcp_errors = Counter(
            "lighthouse_mcp_errors",
            "MCP protocol errors answered, by JSON-RPC code",
            ["code"],
            registry=r,
        )
        self.asks = Counter(
            "lighthouse_asks",
            "Completed asks by delivery path and status",
            ["path", "status"],
            registry=r,
        )
        self.ask_latency = Histogram(
            "lighthouse_ask_latency_seconds",
            "ask round trip by delivery path",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.elicitations = Counter(
            "lighthouse_elicitations",
            "Elicitations sent, by outcome (answered/failed/timeout)",
            ["outcome"],
            registry=r,
        )
        self.elicitations_in_flight = Gauge(
            "lighthouse_elicitations_in_flight",
            "Elicitations awaiting an answer",
            registry=r,
        )
        self.fallbacks = Counter(
            "lighthouse_fallbacks",
            "Requests that fell back to the legacy mailbox, by cause",
            ["cause"],
            registry=r,
        )
        self.auth_rejections = Counter(
            "lighthouse_auth_rejections",
            "Rejected agent requests by reason",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "lighthouse_rate_limited",
            "Requests refused by a rate limit, by scope",
            ["scope"],
            registry=r,
        )
        self.connections_refused = Counter(
            "lighthouse_connections_refused",
            "Connections aborted because their address held too many open ones",
            registry=r,
        )
        self.admin_auth_failures = Counter(
            "lighthouse_admin_auth_failures",
            "Failed admin authentications",
            registry=r,
        )
        self.store_append_latency = Histogram(
            "lighthouse_store_append_seconds",
            "Durable append latency seen by callers",
            buckets=_STORE_BUCKETS,
            registry=r,
        )
        self.store_batch_size = Histogram(
            "lighthouse_store_batch_size",
            "Events per group-commit transaction",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge(
            "lighthouse_sessions",
            "Live MCP sessions",
            ["protocol"],
            registry=r,
        )
        self.elicitation_enabled = Gauge(
            "lighthouse_elicitation_enabled",
            "1 when the elicitation kill switch is on",
            registry=r,
        )
        self.rollout_percent = Gauge(
            "lighthouse_elicitation_rollout_percent",
            "Elicitation rollout percent",
            registry=r,
        )
        self.auto_rollbacks = Counter(
            "lighthouse_auto_rollbacks",
            "Times the guard turned elicitation off",
            registry=r,
        )

        self.store_degraded = Gauge(
            "lighthouse_store_degraded",
            "1 while a part of the event store fails (see /health for the cause)",
            registry=r,
        )
        self.store_failures = Counter(
            "lighthouse_store_failures",
            "Event store failures by component (append, checkpoint, wal_checkpoint) and reason",
            ["component", "reason"],
            registry=r,
        )
        self.store_wal_frames = Gauge(
            "lighthouse_store_wal_frames",
            "Frames in the SQLite WAL at the last background checkpoint",
            registry=r,
        )

    def observe_store_failure(self, component: str, reason: str) -> None:
        """The store's health hook: one failure of `component` for `reason`."""
        self.store_failures.labels(component, reason).inc()

    def observe_commit(self, events: int, seconds: float) -> None:
        """The store's group-commit hook: one transaction of `events` took `seconds`."""
        self.store_batch_size.observe(events)
        self.store_append_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
