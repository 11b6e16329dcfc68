"""Latency histograms and stage results that merge across client processes.

Each client records every operation's latency into a log-bucketed histogram
(2% resolution), which is small enough to send to the parent as JSON and exact
enough that the percentiles of N merged clients are those of the pooled samples
within 2%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)
_FLOOR_NS = 100  # latencies under 0.1 us land in the first bucket


class Histogram:
    """Counts of latencies (ns) in buckets growing by 2%."""

    __slots__ = ("count", "counts", "max_ns", "total_ns")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0

    def add_many(self, latencies_ns: list[int]) -> None:
        counts = self.counts
        log, floor, growth = math.log, _FLOOR_NS, _LOG_GROWTH
        for ns in latencies_ns:
            bucket = int(log(ns / floor) / growth) if ns > floor else 0
            counts[bucket] = counts.get(bucket, 0) + 1
        self.count += len(latencies_ns)
        self.total_ns += sum(latencies_ns)
        if latencies_ns:
            self.max_ns = max(self.max_ns, max(latencies_ns))

    def merge(self, other: Histogram) -> None:
        for bucket, n in other.counts.items():
            self.counts[bucket] = self.counts.get(bucket, 0) + n
        self.count += other.count
        self.total_ns += other.total_ns
        self.max_ns = max(self.max_ns, other.max_ns)

    def percentile_us(self, p: float) -> float:
        """The latency below which ``p`` percent of operations fall, in microseconds."""
        if not self.count:
            return 0.0
        rank = math.ceil(self.count * p / 100)
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                # The bucket's upper edge, but never above the largest sample seen.
                return min(_FLOOR_NS * _GROWTH ** (bucket + 1), self.max_ns) / 1000
        return self.max_ns / 1000

    @property
    def mean_us(self) -> float:
        return self.total_ns / self.count / 1000 if self.count else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": {str(k): v for k, v in self.counts.items()},
            "count": self.count,
            "total_ns": self.total_ns,
            "max_ns": self.max_ns,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Histogram:
        histogram = cls()
        histogram.counts = {int(k): int(v) for k, v in data["counts"].items()}
        histogram.count = int(data["count"])
        histogram.total_ns = int(data["total_ns"])
        histogram.max_ns = int(data["max_ns"])
        return histogram


@dataclass
class StageResult:
    """One client's figures for one stage (or, merged, several clients')."""

    stage: str
    ops: int
    seconds: float
    cpu_seconds: float
    errors: int = 0
    latency: Histogram = field(default_factory=Histogram)

    @property
    def throughput(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def client_cpu_share(self) -> float:
        """Fraction of the stage's wall time this client spent on its own CPU."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "ops": self.ops,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "errors": self.errors,
            "latency": self.latency.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageResult:
        return cls(
            stage=data["stage"],
            ops=int(data["ops"]),
            seconds=float(data["seconds"]),
            cpu_seconds=float(data["cpu_seconds"]),
            errors=int(data["errors"]),
            latency=Histogram.from_json(data["latency"]),
        )


@dataclass
class StageSum:
    """The concurrent clients of one stage taken together."""

    stage: str
    clients: list[StageResult]

    @property
    def throughput(self) -> float:
        """Sum of the clients' throughputs: the course's measure of the whole."""
        return sum(c.throughput for c in self.clients)

    @property
    def mean_client_throughput(self) -> float:
        return self.throughput / len(self.clients) if self.clients else 0.0

    @property
    def ops(self) -> int:
        return sum(c.ops for c in self.clients)

    @property
    def errors(self) -> int:
        return sum(c.errors for c in self.clients)

    @property
    def latency(self) -> Histogram:
        pooled = Histogram()
        for client in self.clients:
            pooled.merge(client.latency)
        return pooled

    @property
    def client_cpu_share(self) -> float:
        shares = [c.client_cpu_share for c in self.clients]
        return sum(shares) / len(shares) if shares else 0.0
