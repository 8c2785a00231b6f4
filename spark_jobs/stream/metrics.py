"""The streaming sidecar's Prometheus metrics, served on `FINEGRAIN_STREAM_METRICS_BIND` (`/metrics`)
by the sidecar process: events by outcome, micro-batch duration, how long a record waited between
the broker and the profile write, and the lag behind the topic's end per partition."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from finegrain.settings import Settings

SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

EVENTS = Counter("finegrain_stream_events_total", "Records of the events topic by outcome: accepted, "
                 "dead_letter (refused, sent to the dead-letter topic), repeated (an event id again)",
                 ["outcome"])
BATCHES = Counter("finegrain_stream_batches_total", "Micro-batches processed")
BATCH_SECONDS = Histogram("finegrain_stream_batch_seconds", "Time to process one micro-batch (checks, "
                          "archive, profiles)", buckets=SECONDS_BUCKETS)
FRESHNESS = Histogram("finegrain_stream_freshness_seconds", "From the broker's timestamp of a record to "
                      "its profile written (the newest record of each batch)", buckets=SECONDS_BUCKETS)
LAG = Gauge("finegrain_stream_lag_records", "Records of the events topic not processed yet", ["partition"])
NEWEST_EVENT = Gauge("finegrain_stream_newest_event_timestamp_seconds", "Event time of the newest event "
                     "folded into a profile")


def serve(settings: Settings) -> int:
    """Start the metrics endpoint on the configured bind; returns its port."""
    host, _, port = settings.stream_metrics_bind.rpartition(":")
    server, _ = start_http_server(int(port), addr=host or "127.0.0.1")
    return int(server.server_port)
