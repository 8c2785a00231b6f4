"""Channel budgets and failures never fail a request: a late pooled channel is abandoned at its budget,
an inline channel over its budget or one that raises is dropped, and the request is flagged."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import redis

from serving.channels.base import RecallChannel, Recalled
from serving.channels.popular import PopularChannelConfig
from serving.config import ServingConfig
from serving.recommend import Recommender, Trace


class _Channel(RecallChannel):
    name = "popular"
    sleep_s: ClassVar[float] = 0.0
    fails: ClassVar[bool] = False

    def recall(self, request: Any, k: int) -> Recalled:
        time.sleep(self.sleep_s)
        if self.fails:
            raise RuntimeError("index corrupt")
        return Recalled(np.asarray(["A", "B"], dtype=object), np.asarray([2.0, 1.0]))


class _SlowPooled(_Channel):
    name = "rule"
    inline = False
    sleep_s = 0.5


class _SlowInline(_Channel):
    name = "content"
    sleep_s = 0.05


class _Broken(_Channel):
    name = "embedding"
    fails = True


def _recommender(*channels: RecallChannel) -> Recommender:
    # The client is never called: _recall reads only the channels.
    recommender = Recommender(ServingConfig(), redis.Redis(port=1))
    recommender.channels = list(channels)
    return recommender


def test_late_failing_and_slow_channels_are_dropped_and_flagged() -> None:
    budget = PopularChannelConfig(budget_ms=20)
    recommender = _recommender(_Channel(budget), _SlowPooled(budget), _SlowInline(budget), _Broken(budget))
    trace = Trace()
    started = time.perf_counter()
    results = recommender._recall(None, trace)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    recommender.close()
    assert list(results) == ["popular"]
    assert elapsed < 0.3  # the pooled channel's 0.5 s were not waited for
    reasons = " | ".join(trace.degraded)
    assert "channel rule: over its 20 ms budget" in reasons
    assert "channel content: over its 20 ms budget" in reasons
    assert "channel embedding: RuntimeError" in reasons
    assert trace.channels["popular"]["candidates"] == 2


def test_a_healthy_request_is_not_flagged() -> None:
    recommender = _recommender(_Channel(PopularChannelConfig(budget_ms=50)))
    trace = Trace()
    results = recommender._recall(None, trace)  # type: ignore[arg-type]
    recommender.close()
    assert list(results) == ["popular"] and not trace.degraded
