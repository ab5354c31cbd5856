"""What an operator watches on `lmforge serve-model`, in Prometheus' text format at `GET /metrics`
(prometheus_client, one registry per HTTP process):

    lmforge_requests_total{code}               completion requests answered, by HTTP status (200, 400, 404, 503, 500)
    lmforge_requests_in_flight                 accepted and not yet finished
    lmforge_queue_length                       accepted, waiting for their first token (queued or being prefilled)
    lmforge_completion_tokens_total            tokens generated (rate() of it is tokens/s)
    lmforge_tokens_per_second                  tokens generated over the last 10 s, per second
    lmforge_time_to_first_token_seconds        histogram: request received -> first text ready
    lmforge_request_duration_seconds           histogram: request received -> last token"""
from __future__ import annotations

import time
from collections import deque

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

WINDOW_S = 10.0
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmforge_requests", "Completion requests answered, by HTTP status", ["code"],
                                registry=r)
        self.in_flight = Gauge("lmforge_requests_in_flight", "Requests accepted and not yet finished", registry=r)
        self.queue = Gauge("lmforge_queue_length", "Requests accepted and waiting for their first token", registry=r)
        self.completion_tokens = Counter("lmforge_completion_tokens", "Tokens generated", registry=r)
        self.rate = Gauge("lmforge_tokens_per_second", f"Tokens generated per second over the last {WINDOW_S:g} s",
                          registry=r)
        self.rate.set_function(self.tokens_per_second)
        self.ttft = Histogram("lmforge_time_to_first_token_seconds", "Request received to first text ready",
                              buckets=BUCKETS, registry=r)
        self.duration = Histogram("lmforge_request_duration_seconds", "Request received to last token",
                                  buckets=BUCKETS, registry=r)
        self.waiting = 0
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) within the window

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def refused(self, status: int) -> None:
        self.requests.labels(str(status)).inc()

    def accepted(self) -> None:
        self.in_flight.inc()
        self.waiting += 1
        self.queue.set(self.waiting)

    def first_token(self, seconds: float) -> None:
        self.waiting -= 1
        self.queue.set(self.waiting)
        self.ttft.observe(seconds)

    def tokens(self, n: int) -> None:
        if n > 0:
            self.completion_tokens.inc(n)
            self.recent.append((time.monotonic(), n))

    def tokens_per_second(self) -> float:
        cutoff = time.monotonic() - WINDOW_S
        while self.recent and self.recent[0][0] < cutoff:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / WINDOW_S

    def finished(self, started: float, ttft: float | None, failed: bool = False, status: int | None = None) -> None:
        self.in_flight.dec()
        if ttft is None:  # never got a first token
            self.waiting -= 1
            self.queue.set(self.waiting)
        self.requests.labels(str(status or (500 if failed else 200))).inc()
        if not failed:
            self.duration.observe(time.perf_counter() - started)
