"""Prometheus metrics of one worker process, counted without locks on the hot path.

A worker serves every socket from one event loop thread, so the code that
stores, delivers and closes adds to plain integers of `TALLY` (a fan-out adds
its socket count once, not once per frame), where prometheus_client's own
counters would take a lock at every increment. The numbers become Prometheus
metrics only when /metrics is scraped (`render`), together with what is
cheaper to read then than to count as it changes: the send queue's depth and
the database's and channel layer's health.

Each worker exposes its own numbers: Prometheus scrapes every worker and sums.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# The close codes `chat_sockets_closed_total` names: a client's normal ones and
# the server's (docs/protocol.md, "Close codes"). A client may close with any
# code it likes (3000-4999 are free for applications); each one as a label
# would be a new series, so everything else is counted under "other".
CLOSE_CODES_LABELLED = frozenset({1000, 1001, 1005, 1006, 1007, 1008, 1009, 1011, 1012, 1013, 4429})

# Seconds from a message's commit to its frame being written to a socket.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Tally:
    """What a worker counts as it goes; read by the collector at scrape time."""

    def __init__(self) -> None:
        self.messages_stored = 0
        self.messages_delivered = 0  # messages x sockets they were written to
        self.frames_delivered = 0  # message frames (a batch frame carries several)
        self.errors: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.open_sockets: Counter[str] = Counter()
        self.reaped_users = 0
        self.reaped_workers = 0
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe_latency(self, seconds: float) -> None:
        """One delivery's store-to-write time (once per layer message, not per socket)."""
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


TALLY = Tally()


class _Collector:
    """Turns `TALLY` and the scrape's readings into metric families."""

    def __init__(self) -> None:
        self.send_queue_depth = 0
        self.health: dict[str, str] = {}
        self.uploads: tuple[int, int] | None = None

    def collect(self) -> Iterator[Metric]:
        tally = TALLY
        sockets = GaugeMetricFamily(
            "chat_open_sockets", "Sockets open on this worker", labels=["endpoint"]
        )
        for endpoint in ("json", "classic"):
            sockets.add_metric([endpoint], tally.open_sockets[endpoint])
        yield sockets
        yield CounterMetricFamily(
            "chat_messages_stored", "Messages committed by this worker", tally.messages_stored
        )
        yield CounterMetricFamily(
            "chat_messages_delivered",
            "Messages written to this worker's sockets (one per message and socket)",
            tally.messages_delivered,
        )
        yield CounterMetricFamily(
            "chat_frames_delivered",
            "Message frames written to this worker's sockets",
            tally.frames_delivered,
        )
        cumulative, buckets = 0, []
        for bound, count in zip(
            (*map(str, LATENCY_BUCKETS), "+Inf"), tally.latency_buckets, strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "chat_delivery_latency_seconds",
            "From a message's commit to its frame written to this worker's sockets",
            buckets=buckets,
            sum_value=tally.latency_sum,
        )
        yield _labelled(
            CounterMetricFamily(
                "chat_errors", "Errors sent to clients, by protocol code", labels=["code"]
            ),
            tally.errors,
        )
        yield _labelled(
            CounterMetricFamily(
                "chat_rate_limited_commands",
                "Commands refused with rate_limited, by command",
                labels=["command"],
            ),
            tally.rate_limited,
        )
        yield _labelled(
            CounterMetricFamily(
                "chat_sockets_closed", "Sockets closed, by close code", labels=["code"]
            ),
            _close_labels(tally.closes),
        )
        yield CounterMetricFamily(
            "chat_presence_reaped_users",
            "Users reported offline because their worker stopped heartbeating",
            tally.reaped_users,
        )
        yield CounterMetricFamily(
            "chat_presence_reaped_workers",
            "Dead workers reaped by this worker",
            tally.reaped_workers,
        )
        yield GaugeMetricFamily(
            "chat_send_queue_depth",
            "Sends waiting to be stored or delivered",
            self.send_queue_depth,
        )
        healthy = GaugeMetricFamily(
            "chat_up", "1 when the dependency answers this worker, else 0", labels=["dependency"]
        )
        for dependency, state in sorted(self.health.items()):
            healthy.add_metric([dependency], 1 if state == "ok" else 0)
        yield healthy
        if self.uploads is not None:
            count, stored = self.uploads
            yield GaugeMetricFamily(
                "chat_uploads_stored", "Uploaded files stored (all workers: the database)", count
            )
            yield GaugeMetricFamily(
                "chat_upload_bytes_stored", "Bytes of the uploaded files stored", stored
            )


def _close_labels(closes: Counter[int]) -> Counter[str]:
    """The closes by label: documented codes by number, the rest as "other"."""
    labelled: Counter[str] = Counter()
    for code, count in closes.items():
        labelled[str(code) if code in CLOSE_CODES_LABELLED else "other"] += count
    return labelled


def _labelled(family: CounterMetricFamily, counts: Counter[str] | Counter[int]) -> Metric:
    for label, count in sorted(counts.items(), key=lambda item: str(item[0])):
        family.add_metric([str(label)], count)
    return family


_collector = _Collector()
_registry = CollectorRegistry(auto_describe=False)
_registry.register(_collector)
_registry.register(ProcessCollector(registry=None))


def render(
    *,
    send_queue_depth: int,
    health: dict[str, str],
    uploads: tuple[int, int] | None = None,
) -> bytes:
    """The Prometheus text exposition of this worker's metrics.

    `uploads`: files stored and their bytes; None (left out) when unknown.
    """
    _collector.send_queue_depth = send_queue_depth
    _collector.health = health
    _collector.uploads = uploads
    return generate_latest(_registry)
