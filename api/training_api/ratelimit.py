"""A token bucket per client: ``RATE_LIMIT_PER_MINUTE`` requests, refilled continuously."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Bucket:
    tokens: float
    updated: float


def take(bucket: Bucket, now: float, capacity: float, per_second: float) -> float:
    """Take one token; returns 0 when allowed, else the seconds until one is available."""
    bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * per_second)
    bucket.updated = now
    if bucket.tokens >= 1:
        bucket.tokens -= 1
        return 0.0
    return (1 - bucket.tokens) / per_second


class RateLimiter:
    # Buckets that refilled completely are dropped once this many are held (bounded memory).
    MAX_BUCKETS = 10_000

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._per_second = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """0 when ``client`` may go ahead, else whole seconds to wait (for ``Retry-After``)."""
        now = self._clock()
        with self._lock:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._prune(now)
            bucket = self._buckets.setdefault(client, Bucket(self._capacity, now))
            wait = take(bucket, now, self._capacity, self._per_second)
        return math.ceil(wait)

    def _prune(self, now: float) -> None:
        full_after = self._capacity / self._per_second
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if now - bucket.updated < full_after
        }
