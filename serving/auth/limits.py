"""Per-key request-rate limits: a token bucket per key in each worker's memory.

A key may make `rate` requests per second (its own `rate_per_s`, else the configured default) with
bursts of `rate * burst_s` (at least 1); a request finding the bucket empty is refused with the
seconds until the next token (`Retry-After`). The buckets are per worker, not shared: nothing is
added to the request path (no Redis round trip, no new way for a request to fail when Redis is
down), and with W workers a key can reach at most W times its rate (a sync worker takes requests
off the shared socket as it frees up, so under load a client's requests spread over the workers
and the effective limit is between 1 and W times the rate). Buckets of `max_keys` keys at most are
kept, the least recently used dropped first (a dropped key starts again with a full bucket).
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections import OrderedDict


class RateLimiter:
    def __init__(self, default_rate_per_s: float, *, burst_s: float = 2.0, max_keys: int = 10_000) -> None:
        if default_rate_per_s <= 0 or burst_s <= 0:
            raise ValueError("rate and burst must be above 0")
        self.default_rate_per_s = default_rate_per_s
        self.burst_s = burst_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key id -> (tokens, at)
        self._lock = threading.Lock()
        owner = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _fresh_lock(owner))

    def capacity(self, rate: float) -> float:
        return max(1.0, rate * self.burst_s)

    def take(self, key_id: str, rate_per_s: float | None = None, now: float | None = None) -> float:
        """Take one token of `key_id`'s bucket: 0.0 if there was one, else the seconds to wait for one."""
        rate = rate_per_s or self.default_rate_per_s
        capacity = self.capacity(rate)
        at = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key_id, (capacity, at))
            tokens = min(capacity, tokens + max(at - last, 0.0) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, at)
                wait = 0.0
            else:
                self._buckets[key_id] = (tokens, at)
                wait = (1.0 - tokens) / rate
            self._buckets.move_to_end(key_id)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    """The Retry-After header: whole seconds, at least 1 (a client told 0 would retry at once)."""
    return str(max(1, math.ceil(wait_s)))


def _fresh_lock(owner: weakref.ref[RateLimiter]) -> None:
    limiter = owner()
    if limiter is not None:
        limiter._lock = threading.Lock()
