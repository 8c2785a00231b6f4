"""Fault injection under load (marked `faults`): the API under gunicorn (2 workers) and the streaming
sidecar on a private stack of their own (`bench/_faults.py`: Redis, ZooKeeper, MongoDB and Kafka on
free ports, never the shared stack), a steady load of recommendations and event posts, and in turn
Redis, ZooKeeper, MongoDB, the Kafka broker, the sidecar and one API worker (SIGKILL) stopped and
started again. For each: no 5xx but the events' 503 while the broker is away, answers flagged
degraded while Redis is down and not after, answers as good as before without the others, a bounded
recovery, and every event acknowledged with 202 in Kafka and in the archive exactly once.
`bench/faults.py` runs the same with longer outages for docs/benchmarks.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from bench._faults import (
    Deployment,
    FaultRun,
    Load,
    acknowledged,
    archived_ids,
    event_accounting,
    faults,
    inject,
    kafka_ids,
    private_deployment,
    sidecar_settle,
    slow_reason,
    wait_archived,
    wait_until,
)
from finegrain.settings import Settings
from serving.events.producer import DELIVERY_TIMEOUT_S
from tests.integration.serving_harness import AS_OF, RANKER, build_datasets, publish, register_ranker

pytestmark = [pytest.mark.integration, pytest.mark.faults]

HOLD_S = 4.0  # each dependency away this long (bench/faults.py holds longer)
# The broker longer than a POST waits for its acknowledgement: a shorter outage is waited out (every post
# acknowledged once it is back, no 503 to see; seen on an idle machine).
KAFKA_HOLD_S = DELIVERY_TIMEOUT_S + 3.0
RECOVERY_BOUND_S = 10.0
SIDECAR_CATCH_UP_S = 180.0  # a Spark start and the backlog; 70 s seen at load 17 on the 2 cores


@pytest.fixture(scope="module")
def deployment(settings: Settings, retail_data: Path, spark: SparkSession,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    events = retail_data / "events.parquet"

    def prepare(own: Settings) -> None:
        build_datasets(own, events, spark)
        publish(own, RANKER, register_ranker(own, events, rounds=20, max_users=150))

    with private_deployment(settings, tmp_path_factory.mktemp("faults"), prepare) as served:
        yield served


def _population(retail_data: Path) -> tuple[list[str], list[str]]:
    events = pd.read_parquet(retail_data / "events.parquet", columns=["user_id", "item_id", "timestamp"])
    before = events[events["timestamp"] < pd.Timestamp(AS_OF, tz="UTC")]
    users = before["user_id"].value_counts().index[:200].astype(str).tolist()
    items = before["item_id"].value_counts().index[:200].astype(str).tolist()
    return users, items


@pytest.mark.timeout(1800)  # six outages and a Spark restart: 4 minutes here, 10-15 at load 15
def test_every_dependency_stopped_and_started_under_load(deployment: Deployment, retail_data: Path) -> None:
    users, items = _population(retail_data)
    load = Load(deployment.server.url, deployment.headers, users, items, rps=30, event_posts=8)
    runs: list[FaultRun] = []
    sidecar = deployment.sidecar.pid()
    load.start()
    try:
        for fault in faults(deployment):
            if fault.name == "sidecar":  # no outage before it may have stopped it
                assert deployment.sidecar.pid() == sidecar, deployment.sidecar.log_tail()
            settle = sidecar_settle(deployment, load) if fault.name == "sidecar" else None
            hold = KAFKA_HOLD_S if fault.name == "kafka" else HOLD_S
            runs.append(inject(fault, load, before_s=2.0, hold_s=hold, after_s=5.0, settle=settle))
    finally:
        outcomes = load.stop()
    assert deployment.sidecar.pid() is not None, deployment.sidecar.log_tail()
    wait_archived(deployment.settings, acknowledged(outcomes), 120)
    accounting = event_accounting(runs, kafka_ids(deployment.settings), archived_ids(deployment.settings))
    summaries = {run.fault.name: run.summary() for run in runs}
    report = "\n".join(f"{name}: {summary} {accounting[name]}" for name, summary in summaries.items())
    for run in runs:
        name, summary = run.fault.name, summaries[run.fault.name]
        assert summary["requests"] > 20, report
        # No 5xx: the one refusal by design is POST /v1/events answering 503 (not acknowledged, to be
        # sent again) while the broker is away.
        server_errors = [o for o in run.outcomes if o.status is not None and o.status >= 500
                         and not (name == "kafka" and o.kind == "events" and o.status == 503)]
        assert not server_errors, f"{name}: {server_errors[:3]}\n{report}"
        if name == "api worker":
            # Only the connections the killed worker held can break (one per client thread at most).
            assert summary["socket_errors"] <= load.threads + load.event_threads, report
        else:
            assert summary["socket_errors"] == 0, report
        other = [o for o in run.outcomes if o.status is not None and 400 <= o.status < 500]
        assert not other, f"{name}: {other[:3]}"
        # Answers degraded because the shared 2-core machine is slow (a channel over its budget, a Redis
        # read over its 50 ms timeout: `slow` in the report, 1-15% here with other work running) are not
        # the fault's and are left out of every count below.
        assert summary["degraded_before"] == 0, report
        if run.fault.degrades:
            # Every answer that started while the server was gone (stopped, not yet started again) is
            # flagged, naming it.
            down = [o for o in run.outcomes if run.down_at <= o.started < run.starting_at
                    and o.kind == "recommend"]
            assert down, report
            assert all(any(r.startswith("redis") for r in o.reasons) for o in down), f"{down[:3]}\n{report}"
        else:
            assert summary["degraded_during"] == 0, f"{name} degraded the answers\n{report}"
        # The sidecar's recovery is its backlog worked off, after a Spark start on a loaded machine.
        bound = SIDECAR_CATCH_UP_S if name == "sidecar" else RECOVERY_BOUND_S
        assert summary["recovery_s"] <= bound, report
        assert summary["degraded_after"] == 0, report
        events = accounting[name]
        assert events["acknowledged"] > 0, report
        assert events["lost_kafka"] == events["lost_archive"] == 0, report
        assert events["duplicated_kafka"] == events["duplicated_archive"] == 0, report
    kafka = next(run for run in runs if run.fault.name == "kafka")
    assert any(o.status == 503 for o in kafka.outcomes if o.kind == "events"), "no post saw the broker away"


def test_zookeeper_away_is_reported_not_degraded(deployment: Deployment, retail_data: Path) -> None:
    """With ZooKeeper down the loaded versions keep serving (answers not degraded), /readyz stays 200
    but says the worker cannot receive new versions, and the metric says the same."""
    users, _ = _population(retail_data)
    zookeeper = deployment.stack.services["zookeeper"]
    zookeeper.down()
    try:
        def reported() -> bool:
            body = httpx.get(f"{deployment.server.url}/readyz", timeout=5).json()
            return body["zookeeper"] is False and "zookeeper" in body["errors"]
        wait_until(reported, 30, "/readyz to report ZooKeeper away")
        ready = httpx.get(f"{deployment.server.url}/readyz", timeout=5)
        answer = httpx.get(f"{deployment.server.url}/v1/recommendations", params={"user_id": users[0]},
                           headers=deployment.headers, timeout=10).json()
        metrics = httpx.get(f"{deployment.server.url}/metrics", headers=deployment.headers, timeout=10).text
    finally:
        zookeeper.up()
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert "new versions" in ready.json()["errors"]["zookeeper"]
    assert answer["ranker"] == RANKER and all(slow_reason(r) for r in answer.get("degraded_reasons", []))
    assert any(line.startswith("finegrain_zookeeper_connected{") and line.endswith(" 0.0")
               for line in metrics.splitlines()), metrics[:2000]

    def back() -> bool:
        body = httpx.get(f"{deployment.server.url}/readyz", timeout=5).json()
        return body["zookeeper"] is True and "zookeeper" not in body["errors"]

    wait_until(back, 60, "/readyz to report ZooKeeper back")
