"""The nightly DAG (dags/finegrain_nightly.py) run for real with `dag.test()` on the real data against
the local stack (Airflow on SQLite in a temporary AIRFLOW_HOME): ingest of the raw file and an event
archive, the four offline jobs, the training set, the three models trained with quick settings, the
gate, publication and the smoke test of an API started beside it, which then serves the published
versions. And params cannot run a command: one holding `'; touch injected; '` is refused by its
schema, or reaches its command as one argument that names no file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cli import api as api_cli
from finegrain.apikeys import Scope
from finegrain.data.ingest import read_watermark
from finegrain.data.replay import replay_events
from finegrain.data.retail import read_events, read_events_table
from finegrain.events.archive import EventArchive
from finegrain.events.validation import validate_event
from finegrain.schemas import BehaviorEvent
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import Dataset
from finegrain.storage.redis_versions import RedisVersions
from models.publishing import ModelPublisher
from models.registry import ModelRegistry
from serving.process import ApiServer
from tests.integration.airflow_env import DAGS, migrated_airflow_env
from tests.integration.api_keys import api_key, bearer
from tests.integration.conftest import drop_namespace

pytestmark = pytest.mark.integration

RUNNER = Path(__file__).with_name("dag_runner.py")
NIGHTLY = DAGS / "finegrain_nightly.py"
# The day after the data's last purchase: what a shop's nightly run as of "today" is.
AS_OF = date(2010, 12, 10)
REPLAYED_DAY = date(2010, 12, 8)
MODELS = ("ranker_xgboost", "ranker_tf", "embeddings_als")
QUICK = {"max_users": 150, "xgboost_rounds": 20, "xgboost_objective": "binary:logistic", "tf_epochs": 1,
         "als_factors": 16, "als_iterations": 4}
HOSTILE = "'; touch injected; '"
API_BIND = "127.0.0.1:18381"
# What the nightly `gate` task runs, through the DAGs' own command helper, outside a DAG run.
GATE_TASK = f"""
import sys
sys.path.insert(0, {str(DAGS)!r})
from finegrain_deployment import run_finegrain
from airflow.sdk.exceptions import AirflowFailException
try:
    run_finegrain(["models", "gate", *sys.argv[1:], "--json"])
except AirflowFailException as exc:
    print("REFUSED AirflowFailException", exc)
"""


def run_dag(env: dict[str, str], logical_date: str, conf: dict[str, Any], cwd: Path,
            timeout: int = 1700) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    result = subprocess.run([sys.executable, str(RUNNER), str(NIGHTLY), "finegrain_nightly", logical_date,
                             json.dumps(conf)], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    states = {line.split()[1]: line.split()[2] for line in result.stdout.splitlines()
              if line.startswith("TASK ")}
    return result, states


@pytest.fixture(scope="module")
def nightly_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A registry, ZooKeeper root and var dir of the module's own (the gate compares against nothing
    another test published), an event archive in it, and one API worker on a port of this module."""
    folder = tmp_path_factory.mktemp("nightly")
    own = settings.model_copy(update={
        "mongo_database": settings.mongo_database + "_nightly",
        "zookeeper_root": settings.zookeeper_root + "_nightly",
        "var_dir": folder / "var", "event_archive": str(folder / "archive"),
        "api_bind": API_BIND, "api_workers": 1})
    yield own
    drop_namespace(own)


@pytest.fixture(scope="module")
def recommend_key(nightly_settings: Settings) -> str:
    """What the smoke test asks the API with, as any client: a key of the `recommend` scope."""
    return api_key(nightly_settings, Scope.RECOMMEND, name="nightly-smoke-test")


@pytest.fixture(scope="module")
def airflow_env(nightly_settings: Settings, recommend_key: str, tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow")
    env = migrated_airflow_env(nightly_settings, home, nightly_settings.var_dir)
    env.update({"FINEGRAIN_EVENT_ARCHIVE": nightly_settings.event_archive_location,
                "FINEGRAIN_API_BIND": API_BIND, "FINEGRAIN_API_WORKERS": "1",
                "FINEGRAIN_API_KEY": recommend_key})
    return env


def test_dags_import_only_airflow() -> None:
    """DAG files orchestrate: importing one must not pull in Spark, pandas, TensorFlow or our core."""
    script = f"""
import sys, importlib.util, pathlib
import airflow.sdk, airflow.providers.apache.spark.operators.spark_submit
import airflow.providers.standard.operators.python
before = set(sys.modules)
for path in sorted(pathlib.Path({str(DAGS)!r}).glob("*.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
heavy_roots = {{"pyspark", "pandas", "tensorflow", "xgboost", "finegrain", "spark_jobs", "models", "serving"}}
heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in heavy_roots)
print("HEAVY", heavy)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout


def test_a_param_holding_shell_code_runs_nothing(airflow_env: dict[str, str], tmp_path: Path) -> None:
    """Issue 13: a date param is refused by its pattern before any run exists; a free-text param
    reaches its command as one argument (a file name that does not exist), so the ingest fails with
    that name and nothing after it runs."""
    env = {**airflow_env, "FINEGRAIN_DATA_DIR": str(tmp_path / "data")}
    refused, states = run_dag(env, "2010-12-11T02:00:00+00:00", {"as_of": HOSTILE}, tmp_path, 300)
    assert refused.returncode == 3, (refused.stdout + refused.stderr)[-3000:]
    assert "PARAMS_REFUSED Invalid input for param as_of" in refused.stdout and states == {}

    failed, states = run_dag(env, "2010-12-12T02:00:00+00:00", {"source_csv": HOSTILE}, tmp_path, 300)
    tail = (failed.stdout + failed.stderr)[-4000:]
    assert failed.returncode == 0, tail
    assert "DAG_RUN_STATE failed" in failed.stdout, tail
    assert states.pop("ingest") == "failed", tail
    assert set(states.values()) == {"upstream_failed"}, states
    assert f"file drop {HOSTILE} cannot be read" in failed.stdout + failed.stderr
    for folder in (tmp_path, DAGS.parent, Path(env["FINEGRAIN_VAR_DIR"])):
        assert not (folder / "injected").exists(), folder
    assert not (tmp_path / "data").exists()  # the ingest wrote nothing


def archive_a_replayed_day(settings: Settings, retail_data: Path) -> dict[str, int]:
    """The day REPLAYED_DAY as the sidecar would have archived it after `finegrain replay` (the API's
    own checks turn the JSON events into BehaviorEvents), plus one purchase a client made that the CSV
    does not have; written by the archive's own writer, in micro-batches of 500."""
    planned = replay_events(read_events(retail_data), REPLAYED_DAY, date(2010, 12, 9))
    planned.append({"event_id": "nightly-test-new", "user_id": planned[0]["user_id"],
                    "item_id": planned[0]["item_id"], "type": "purchase", "quantity": 3, "price": 1.25,
                    "timestamp": planned[-1]["timestamp"] + 1000})
    now_ms = int(time.time() * 1000)
    events = [validate_event(raw, index, now_ms) for index, raw in enumerate(planned)]
    assert all(isinstance(event, BehaviorEvent) for event in events)
    archive = EventArchive.at(settings.event_archive_location)
    for batch, start in enumerate(range(0, len(events), 500)):
        archive.write_batch(batch, events[start:start + 500])  # type: ignore[arg-type]
    purchases = sum(1 for raw in planned if raw["type"] == "purchase")
    return {"purchases": purchases, "other": len(planned) - purchases}


@pytest.fixture(scope="module")
def api(nightly_settings: Settings) -> Iterator[ApiServer]:
    """The API beside the pipeline, started before anything is published (so not ready yet): it must
    pick up what the run publishes by itself, as in production."""
    server = ApiServer(nightly_settings)
    server.start(ready=False)
    yield server
    server.stop()


# About 5 minutes on an idle 2-core machine (bench/nightly.py --quick); more when other work shares it.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_nightly_dag_ingests_builds_trains_publishes_and_the_api_serves_it(
        airflow_env: dict[str, str], nightly_settings: Settings, retail_data: Path, api: ApiServer,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archived = archive_a_replayed_day(nightly_settings, retail_data)
    result, states = run_dag(airflow_env, f"{AS_OF}T02:00:00+00:00", QUICK, tmp_path)
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, tail
    assert set(states.values()) == {"success"} and len(states) == 12, (states, tail)
    assert "DAG_RUN_STATE success" in result.stdout

    # Ingest: the CSV's lines before the as-of date, the replayed purchases dropped against them, the
    # views and clicks left in the archive, the client's purchase added.
    data_dir = Path(airflow_env["FINEGRAIN_DATA_DIR"])
    report = json.loads((data_dir / "report.json").read_text())
    sources = {source["kind"]: source for source in report["sources"]}
    csv_rows = read_events_table(retail_data).num_rows
    assert sources["file drop"]["added"] == csv_rows
    assert sources["archive"]["duplicates"] == archived["purchases"] - 1
    assert sources["archive"]["other_types"] == archived["other"] and sources["archive"]["added"] == 1
    assert read_events_table(data_dir).num_rows == csv_rows + 1
    mark = read_watermark(data_dir)
    assert mark is not None and mark.as_of == AS_OF.isoformat()

    # Every dataset rebuilt as of the date, every model registered once and published.
    versions = RedisVersions(redis_client(nightly_settings))
    for dataset in (Dataset.FEATURES, Dataset.INDEX, Dataset.SIMILARITY, Dataset.POPULARITY):
        current = versions.current(dataset)
        assert current is not None and current.startswith(f"{AS_OF:%Y%m%d}-"), (dataset, current)
    registry = ModelRegistry(nightly_settings)
    published = {}
    for name in MODELS:
        entries = registry.list(name)
        assert len(entries) == 1 and entries[0].published, (name, entries)
        assert entries[0].manifest.data_snapshot.as_of_date == AS_OF.isoformat()
        published[name] = entries[0].version
    with ModelPublisher(nightly_settings) as publisher:
        assert {name: publisher.published(name)[0].version for name in MODELS} == published  # type: ignore[union-attr]

    # The API serves them (the smoke task checked it; so does the test, independently).
    ready = httpx.get(f"{api.url}/readyz", timeout=10).json()
    assert ready["ready"] and ready["models"] == published, ready
    user = str(read_events(data_dir)["user_id"].value_counts().index[0])
    answer = httpx.get(f"{api.url}/v1/recommendations", params={"user_id": user, "scene": "deep"},
                       headers=bearer(airflow_env["FINEGRAIN_API_KEY"]), timeout=10).json()
    assert answer["ranker"] == "ranker_tf" and answer["versions"]["ranker_tf"] == published["ranker_tf"]

    # The smoke test refuses what is not published, in one line.
    monkeypatch.setattr(api_cli, "get_settings", lambda: nightly_settings)
    wrong = CliRunner().invoke(api_cli.app, ["smoke", "--expect", "ranker_xgboost=19990101T000000.000",
                                             "--user", user])
    assert wrong.exit_code == 2, wrong.output
    assert "ranker_xgboost: 19990101T000000.000 was published but ZooKeeper holds" in wrong.output

    timings = {line.split()[1]: float(line.split()[3]) for line in result.stdout.splitlines()
               if line.startswith("TASK ")}
    print("NIGHTLY_TASK_SECONDS", json.dumps(timings, sort_keys=True))

    # The next night's XGBoost comes out worse: the gate task's command refuses it, its task fails
    # without retry saying why, and the published version stays.
    entry = registry.get("ranker_xgboost", published["ranker_xgboost"])
    worse = registry.register(
        "ranker_xgboost", registry.fetch_artifact(entry.manifest), features=list(entry.manifest.features),
        metrics={**entry.manifest.metrics, "ndcg@20": entry.manifest.metrics["ndcg@20"] - 0.05},
        params=dict(entry.manifest.params), framework=entry.manifest.framework)
    refused = subprocess.run([sys.executable, "-c", GATE_TASK, f"ranker_xgboost={worse.version}"],
                             env=airflow_env, capture_output=True, text=True, timeout=300)
    assert "REFUSED AirflowFailException" in refused.stdout, refused.stdout + refused.stderr[-3000:]
    reason = f"ranker_xgboost {worse.version}: ranker_xgboost {worse.version} is worse: ndcg@20"
    assert reason in refused.stdout, refused.stdout
    with ModelPublisher(nightly_settings) as publisher:
        still = publisher.published("ranker_xgboost")[0]
    assert still is not None and still.version == published["ranker_xgboost"]
