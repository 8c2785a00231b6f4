"""An Airflow home of its own for a DAG test: the environment that points Airflow at `dags/`, a Spark
connection on `local[2]` and the test's Finegrain namespaces, with its metadata database migrated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from finegrain.settings import Settings

DAGS = Path(__file__).resolve().parents[2] / "dags"


def migrated_airflow_env(settings: Settings, home: Path, var_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW_CONN_FINEGRAIN_SPARK": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "FINEGRAIN_REDIS_URL": settings.redis_url,
        "FINEGRAIN_MONGO_DATABASE": settings.mongo_database,
        "FINEGRAIN_ZOOKEEPER_ROOT": settings.zookeeper_root,
        "FINEGRAIN_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "FINEGRAIN_SPARK_DRIVER_JAVA_OPTIONS": settings.spark_driver_java_options,
        "FINEGRAIN_VAR_DIR": str(var_dir),
        "FINEGRAIN_DATA_DIR": str(var_dir / "data"),  # where the DAGs' load task writes the events
    }
    migrate = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    return env
