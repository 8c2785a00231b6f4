"""The batch jobs on a real Spark standalone cluster (a master and a worker on 127.0.0.1, `spark_master`):
the offline build and the training set, run unchanged through the entries production uses, store
exactly what the same jobs store on `local[*]`.

One as-of date, the day after the data's last purchase (from the load report), on the events of the
`HISTORY_DAYS` before it, and one run of each side: the local runs go through the session's `spark`
fixture (`local[*]`, 8 shuffle partitions); the cluster runs (16 shuffle partitions) are
child processes, as the DAGs run them: `spark-submit --master spark://... spark_jobs/submit.py JOBS`
(the nightly DAG's task, the master from spark-submit) and `python spark_jobs/training_set.py` with
FINEGRAIN_SPARK_MASTER set (the master from the settings). Both write into a namespace of their own, so
no other test sees versions as of this date.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pyspark
import pytest
from google.protobuf.message import Message
from pyspark.sql import SparkSession

from finegrain.codecs import decode
from finegrain.data.layout import EVENTS_FILE
from finegrain.data.retail import read_report
from finegrain.schemas import ItemFeatureMatrix, ItemFeatures, ScoredItemList, UserProfile
from finegrain.settings import PROJECT_ROOT, Settings, get_settings
from finegrain.spark import project_archive
from finegrain.stack import SPARK_SERVICE_NAMES, ServiceStatus
from finegrain.stack.spark_cluster import SparkMasterService, SparkWorkerService
from finegrain.storage.clients import mongo_database, redis_client
from finegrain.storage.contract import Dataset, MongoCollections, RedisKeys
from finegrain.storage.redis_versions import RedisVersions
from finegrain.training.training_set import LABEL_DAYS, train_cutoffs
from models.training_set_io import read_manifest, read_training_set
from spark_jobs import JOBS
from spark_jobs.runner import load_job, run_jobs
from spark_jobs.training_set import TrainingSetRequest, build_training_set_spark
from tests.integration.conftest import own_namespace

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

JOB_DATASETS = {name: load_job(name).dataset for name in JOBS}
USERS_PER_CUTOFF = 100  # a sample keeps the training set quick; two partitions still share the work
# Days of events the runs read: the default cut-offs reach 3 label windows back, plus one of history.
HISTORY_DAYS = 4 * LABEL_DAYS
# The cluster's partitioning differs from local[*]'s 8 on purpose: the outputs must not depend on it.
CLUSTER_CONF = ["--conf", "spark.sql.shuffle.partitions=16", "--conf", "spark.ui.port=17190"]
PYTHON = str(Path(sys.executable))


@dataclass(frozen=True)
class Side:
    versions: dict[Dataset, str]
    training_set: Path


@pytest.fixture(scope="module")
def namespace(stack: list[ServiceStatus]) -> Iterator[Settings]:
    with own_namespace(get_settings()) as settings:
        yield settings


@pytest.fixture(scope="module")
def as_of(retail_data: Path) -> date:
    """The day after the data's last purchase: what a nightly run on this data would be."""
    last = datetime.fromisoformat(read_report(retail_data)["last_timestamp"])
    return last.date() + timedelta(days=1)


@pytest.fixture(scope="module")
def events(retail_data: Path, as_of: date, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The events of the `HISTORY_DAYS` before the as-of date (one Parquet file, in the file's order),
    which keeps both runs short: every job and cut-off still has history before it."""
    lines = pd.read_parquet(retail_data / EVENTS_FILE)
    recent = lines[lines["timestamp"] >= pd.Timestamp(as_of - timedelta(days=HISTORY_DAYS), tz="UTC")]
    path = tmp_path_factory.mktemp("events") / EVENTS_FILE
    recent.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def local(spark: SparkSession, namespace: Settings, events: Path, as_of: date,
          tmp_path_factory: pytest.TempPathFactory) -> Side:
    assert spark.sparkContext.master.startswith("local")
    results = run_jobs([load_job(name) for name in JOBS], as_of, events, settings=namespace, spark=spark)
    out = tmp_path_factory.mktemp("local") / "training_set"
    build_training_set_spark(spark, namespace, TrainingSetRequest(
        as_of=as_of, cutoffs=train_cutoffs(as_of), out=out, events_path=events, max_users=USERS_PER_CUTOFF))
    return Side({result.dataset: result.version for result in results}, out)


@pytest.fixture(scope="module")
def cluster(spark_master: str, local: Side, namespace: Settings, events: Path, as_of: date,
            tmp_path_factory: pytest.TempPathFactory) -> Side:
    env = {
        **namespace.environment(),
        "PYTHONPATH": str(PROJECT_ROOT),  # the driver's code; the session ships it to the executors
        "PYSPARK_PYTHON": PYTHON,
        "PYSPARK_DRIVER_PYTHON": PYTHON,
        "SPARK_LOCAL_IP": "127.0.0.1",  # the driver's sockets and web UI on loopback
    }
    _run([str(Path(PYTHON).parent / "spark-submit"), "--master", spark_master, *CLUSTER_CONF,
          "--name", "finegrain-cluster-test-offline-build", str(PROJECT_ROOT / "spark_jobs" / "submit.py"),
          *JOBS, "--as-of", as_of.isoformat(), "--events", str(events)], env)
    out = tmp_path_factory.mktemp("cluster") / "training_set"
    # The local side's cut-offs: the default (a training run's plan) would also need a backtest's
    # history, more than these events hold.
    cutoffs = ",".join(c.isoformat() for c in train_cutoffs(as_of))
    _run([PYTHON, str(PROJECT_ROOT / "spark_jobs" / "training_set.py"), "--as-of", as_of.isoformat(),
          "--cutoffs", cutoffs, "--events", str(events), "--out", str(out), "--max-users",
          str(USERS_PER_CUTOFF)],
         {**env, "FINEGRAIN_SPARK_MASTER": spark_master,  # the master from the settings, not spark-submit
          "PYSPARK_SUBMIT_ARGS": " ".join([*CLUSTER_CONF, "pyspark-shell"])})
    versions = RedisVersions(redis_client(namespace))
    current = {dataset: versions.current(dataset) for dataset in local.versions}
    assert all(current.values()), current
    return Side({dataset: str(version) for dataset, version in current.items()}, out)


def _run(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_the_runs_used_the_cluster_and_its_shipped_code(cluster: Side, local: Side, as_of: date) -> None:
    settings = get_settings()
    master = SparkMasterService(settings)
    with urllib.request.urlopen(f"{master.ui_url}/json/", timeout=5) as response:
        state = json.load(response)
    apps = {app["name"]: app for app in sorted(state["completedapps"], key=lambda app: app["starttime"])}
    assert "finegrain-cluster-test-offline-build" in apps, sorted(apps)
    assert "finegrain-training-set" in apps, sorted(apps)
    # Each application's executors ran on the worker with the zip of this very checkout's job packages.
    archive = project_archive(settings.var_dir / "spark-tmp").name
    work = SparkWorkerService(settings).dir / "work"
    for name in ("finegrain-cluster-test-offline-build", "finegrain-training-set"):
        shipped = list((work / apps[name]["id"]).glob(f"*/{archive}"))
        assert shipped, f"{name}: no executor of {apps[name]['id']} under {work} fetched {archive}"
    for dataset, version in cluster.versions.items():
        assert version.startswith(f"{as_of:%Y%m%d}-") and version != local.versions[dataset], dataset


def test_the_stack_lists_the_running_cluster(spark_master: str) -> None:
    result = subprocess.run([PYTHON, "-m", "cli", "stack", "status", "--json"], capture_output=True,
                            text=True, timeout=120, cwd=PROJECT_ROOT, env={**os.environ,
                                                                           "PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout.strip().splitlines()[-1])
    for name in SPARK_SERVICE_NAMES:
        assert status[name]["healthy"] and status[name]["version"] == pyspark.__version__, status[name]
    assert status["spark-master"]["address"] == spark_master.removeprefix("spark://")


@pytest.mark.parametrize("job", list(JOBS))
def test_each_dataset_is_identical_to_local(job: str, cluster: Side, local: Side, namespace: Settings
                                            ) -> None:
    dataset = JOB_DATASETS[job]
    mine, theirs = (stored(namespace, dataset, side.versions[dataset]) for side in (local, cluster))
    assert len(mine) > 1, f"{dataset}: nothing stored locally"
    _assert_same(mine, theirs, f"{dataset} in Redis")
    if dataset == Dataset.FEATURES:
        mine, theirs = (documents(namespace, side.versions[dataset]) for side in (local, cluster))
        assert mine, "no feature documents in Mongo"
        _assert_same(mine, theirs, "feature documents in Mongo")


def test_the_training_set_is_identical_to_local(cluster: Side, local: Side) -> None:
    mine, theirs = (_rows(side.training_set) for side in (local, cluster))
    assert len(mine) > USERS_PER_CUTOFF and mine["label"].sum() > 0
    assert mine.isna().to_numpy().any(), "the comparison should cover unknown (NaN) features too"
    pd.testing.assert_frame_equal(mine, theirs, check_exact=True)
    manifests = [read_manifest(side.training_set) for side in (local, cluster)]
    assert read_training_set(cluster.training_set).candidate_recall() == pytest.approx(
        manifests[0]["candidate_recall"], abs=1e-6)
    for key in ("rows", "groups", "positives", "cutoffs", "feature_names", "candidate_recall"):
        assert manifests[1][key] == manifests[0][key], key


def stored(settings: Settings, dataset: Dataset, version: str) -> dict[str, bytes]:
    """Every Redis value of one dataset version, keyed without the version, with the fields naming the
    version or the build time blanked (they differ between any two runs)."""
    client = redis_client(settings)
    prefix = RedisKeys.versioned_prefix(dataset, version)
    keys = sorted(bytes(key).decode() for key in client.scan_iter(match=prefix + "*", count=5000))
    values: dict[str, bytes] = {}
    for start in range(0, len(keys), 2000):
        batch = keys[start:start + 2000]
        for key, data in zip(batch, client.mget(batch), strict=True):
            assert data is not None, key
            values[key[len(prefix):]] = _blank(_message(dataset, key[len(prefix):], bytes(data)), version)
    return values


def documents(settings: Settings, version: str) -> dict[str, bytes]:
    collection = mongo_database(settings)[MongoCollections.versioned(Dataset.FEATURES, version)]
    return {doc["_id"]: _blank(decode(UserProfile if doc["kind"] == "user" else ItemFeatures, doc["pb"]),
                               version)
            for doc in collection.find()}


def _message(dataset: Dataset, name: str, data: bytes) -> Message | bytes:
    if dataset != Dataset.FEATURES:
        return decode(ScoredItemList, data)
    if name.startswith("user:"):
        return decode(UserProfile, data)
    if name.startswith("items:"):
        return decode(ItemFeatureMatrix, data)
    return data  # the block count


def _blank(value: Message | bytes, version: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if "version" in value.DESCRIPTOR.fields_by_name:
        value.version = ""  # type: ignore[attr-defined]
    if isinstance(value, ScoredItemList):
        value.generated_ms = 0
        value.key = value.key.replace(version, "{version}")
    return value.SerializeToString(deterministic=True)


def _assert_same(mine: dict[str, bytes], theirs: dict[str, bytes], what: str) -> None:
    assert sorted(mine) == sorted(theirs), f"{what}: other keys"
    differ = [key for key in mine if mine[key] != theirs[key]]
    assert not differ, f"{what}: {len(differ)} of {len(mine)} values differ, e.g. {differ[:5]}"


def _rows(path: Path) -> pd.DataFrame:
    rows = pq.read_table(path).to_pandas()
    return rows.sort_values(["group", "position"]).reset_index(drop=True)
