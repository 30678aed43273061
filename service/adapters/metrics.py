"""Prometheus metrics of one process (its own registry, so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "libjobs_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "libjobs_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.projection_position = Gauge(
            "libjobs_projection_position", "Store position applied to the read models", registry=self.registry
        )
        self.store_position = Gauge(
            "libjobs_store_position", "Last position in the event store", registry=self.registry
        )
        self.projection_lag = Gauge(
            "libjobs_projection_lag_events",
            "Events stored but not yet in the read models",
            registry=self.registry,
        )
        self.nats_connected = Gauge(
            "libjobs_nats_connected", "1 while connected to NATS (and set up), else 0", registry=self.registry
        )
        self.relay_lag = Gauge(
            "libjobs_relay_lag_events",
            "Events stored but not yet published to NATS by this process's relay (0 when it does not lead)",
            registry=self.registry,
        )
        self.relay_published = Counter(
            "libjobs_relay_published_total", "Events published to NATS by the relay", registry=self.registry
        )
        self.live_subscribers = Gauge(
            "libjobs_sse_subscribers", "Open GET /events streams", registry=self.registry
        )
        self.live_dropped = Gauge(
            "libjobs_sse_dropped",
            "GET /events streams dropped for reading too slowly",
            registry=self.registry,
        )
        self.fires = Counter(
            "libjobs_fires_total",
            "Fires claimed by this process's scheduler",
            ["trigger"],
            registry=self.registry,
        )
        self.fires_taken_over = Counter(
            "libjobs_fires_taken_over_total",
            "Fires of another scheduler replica's jobs this one claimed, still unclaimed after the grace",
            registry=self.registry,
        )
        self.missed_fires = Counter(
            "libjobs_missed_fires_total",
            "Fires older than the catch-up window, counted and not run",
            registry=self.registry,
        )
        self.fire_delay = Histogram(
            "libjobs_fire_delay_seconds",
            "How long after its nominal instant a fire was claimed",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300, 3600),
        )
        self.runs = Counter(
            "libjobs_runs_total",
            "Runs this process's executor ended, by outcome",
            ["status"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:  # labels() costs more than the observation: look each set up once
            children = self._children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def track_lag(self, store_position: Callable[[], int], projection_position: Callable[[], int]) -> None:
        self.projection_position.set_function(projection_position)
        self.store_position.set_function(store_position)
        self.projection_lag.set_function(lambda: max(0, store_position() - projection_position()))

    def observe_run(self, status: str) -> None:
        self.runs.labels(status=status).inc()

    def observe_fire(self, fire: Any, delay_s: float) -> None:
        self.fires.labels(fire.trigger).inc()
        self.missed_fires.inc(fire.missed_fires)
        if fire.trigger == "schedule":
            self.fire_delay.observe(max(0.0, delay_s))

    def track_messaging(
        self,
        *,
        nats_connected: Callable[[], bool],
        relay_lag: Callable[[], int],
        live_subscribers: Callable[[], int],
        live_dropped: Callable[[], int],
    ) -> None:
        self.nats_connected.set_function(lambda: float(nats_connected()))
        self.relay_lag.set_function(relay_lag)
        self.live_subscribers.set_function(live_subscribers)
        self.live_dropped.set_function(live_dropped)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
