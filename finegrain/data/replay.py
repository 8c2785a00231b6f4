"""Replaying a shop's history as live behaviour: the purchases of a loaded data set, in time order,
posted to the running API (`POST /v1/events`), with synthetic views and clicks around them.

For demos, benchmarks and tests of the real-time half: the API produces them to Kafka, the streaming
sidecar folds them into real-time profiles and archives them. `finegrain replay` is the command.

- The events keep their own timestamps (the data's dates), so what the sidecar archives lands under
  the dates the purchases happened; `speed` paces the posting: 60 posts an hour of the data's time in
  a minute, 0 posts as fast as the API takes them.
- Purchases keep the loader's `event_id` (invoice and line), so replaying the same span twice posts
  the same ids (the nightly ingest removes the repeats). Each purchase is preceded by one to three
  views of its item and sometimes a click, in the minutes before it, marked
  `context.extra["synthetic"] = "true"`, with ids derived from the purchase's, drawn from a seeded
  generator: the same span gives the same events.
- A purchase's basket is its invoice: `context.session_id` and `context.extra["invoice"]` carry it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx
import numpy as np
import pandas as pd

from finegrain.dates import as_of_ms
from finegrain.errors import DataError, FinegrainError
from finegrain.events.schema import MAX_EVENTS
from finegrain.features.history import epoch_ms

SYNTHETIC = "synthetic"
BROWSE_BEFORE_MS = (30_000, 600_000)  # a synthetic view comes 30 s to 10 min before its purchase


@dataclass
class ReplaySummary:
    start: date
    end: date
    purchases: int = 0
    synthetic: int = 0
    posted: int = 0
    batches: int = 0
    users: int = 0
    seconds: float = 0.0
    first_ms: int = 0
    last_ms: int = 0
    refused: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(), "purchases": self.purchases,
                "synthetic": self.synthetic, "posted": self.posted, "batches": self.batches,
                "users": self.users, "seconds": round(self.seconds, 2),
                "events_per_second": round(self.posted / self.seconds, 1) if self.seconds else None}


def replay_events(events: pd.DataFrame, start: date, end: date, *, seed: int = 0,
                  synthetic: bool = True) -> list[dict[str, Any]]:
    """The JSON events of the purchases in [start, end) (midnight UTC), with their synthetic views and
    clicks, sorted by time (a purchase after the browsing that leads to it)."""
    if end <= start:
        raise DataError(f"bad span: --to {end} must be after --from {start}")
    ts = epoch_ms(events["timestamp"])
    window = events.loc[(ts >= as_of_ms(start)) & (ts < as_of_ms(end))]
    if window.empty:
        raise DataError(f"no purchases from {start} to {end} in the data "
                        f"(it runs from {pd.Timestamp(ts.min(), unit='ms').date()} "
                        f"to {pd.Timestamp(ts.max(), unit='ms').date()})")
    times = epoch_ms(window["timestamp"])
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int, dict[str, Any]]] = []
    for row, (event_id, user, item, quantity, price, invoice, country) in enumerate(zip(
            window["event_id"], window["user_id"], window["item_id"], window["quantity"], window["price"],
            window["invoice"], window["country"], strict=True)):
        at = int(times[row])
        context = {"session_id": str(invoice), "extra": {"invoice": str(invoice)}}
        if isinstance(country, str) and country:
            context["country"] = country
        out.append((at, 1, {"event_id": str(event_id), "user_id": str(user), "item_id": str(item),
                            "type": "purchase", "quantity": int(quantity), "price": float(price),
                            "timestamp": at, "context": context}))
        if not synthetic:
            continue
        kinds = ["view"] * int(rng.integers(1, 4)) + (["click"] if rng.random() < 0.5 else [])
        offsets = np.sort(rng.integers(*BROWSE_BEFORE_MS, size=len(kinds)))[::-1]
        for n, (kind, before) in enumerate(zip(kinds, offsets, strict=True)):
            out.append((at - int(before), 0, {
                "event_id": f"{event_id}:{SYNTHETIC}:{n}", "user_id": str(user), "item_id": str(item),
                "type": kind, "timestamp": at - int(before),
                "context": {"session_id": str(invoice), "extra": {SYNTHETIC: "true"}}}))
    out.sort(key=lambda entry: (entry[0], entry[1]))
    return [event for _, _, event in out]


class Replayer:
    """Posts events to the API's `/v1/events`, paced by their timestamps at `speed` times real time."""

    def __init__(self, base_url: str, *, speed: float = 60.0, batch_size: int = MAX_EVENTS,
                 headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> None:
        if speed < 0:
            raise DataError(f"bad --speed {speed}: 0 (as fast as possible) or more")
        self.base_url = base_url.rstrip("/")
        self.speed = speed
        self.batch_size = min(batch_size, MAX_EVENTS)
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers or {})

    def close(self) -> None:
        self.client.close()

    def post(self, events: Sequence[dict[str, Any]], summary: ReplaySummary,
             progress: Callable[[ReplaySummary], object] | None = None) -> ReplaySummary:
        started = time.monotonic()
        if not events:
            return summary
        summary.first_ms, summary.last_ms = events[0]["timestamp"], events[-1]["timestamp"]
        for batch in self._batches(events, started):
            try:
                response = self.client.post("/v1/events", json={"events": batch})
            except httpx.HTTPError as exc:
                raise FinegrainError(f"the API at {self.base_url} does not answer ({exc}); start it with "
                                     "`finegrain api start`") from None
            if response.status_code != 202:
                raise FinegrainError(f"the API refused a batch with HTTP {response.status_code}: "
                                     f"{response.text[:300]}")
            summary.posted += len(batch)
            summary.batches += 1
            if progress is not None:
                progress(summary)
        summary.seconds = time.monotonic() - started
        return summary

    def _batches(self, events: Sequence[dict[str, Any]], started: float) -> Iterator[list[dict[str, Any]]]:
        """Batches of events whose time has come (all of them at once when speed is 0)."""
        first = events[0]["timestamp"]
        batch: list[dict[str, Any]] = []
        for event in events:
            if self.speed > 0:
                due = started + (event["timestamp"] - first) / 1000 / self.speed
                wait = due - time.monotonic()
                if wait > 0 and batch:
                    yield batch
                    batch = []
                if wait > 0:
                    time.sleep(wait)
            batch.append(event)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def summarise(events: Sequence[dict[str, Any]], start: date, end: date) -> ReplaySummary:
    synthetic = sum(1 for e in events if e["type"] != "purchase")
    return ReplaySummary(start=start, end=end, purchases=len(events) - synthetic, synthetic=synthetic,
                         users=len({e["user_id"] for e in events}))
