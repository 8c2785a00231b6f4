"""Every address and path Finegrain uses, read from `FINEGRAIN_*` environment variables.

The defaults point at the local stack that `finegrain stack up` starts on 127.0.0.1, so production is
the same code with these variables set to the real clusters.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from finegrain.data.layout import CATALOG_FILE, EVENTS_FILE, LOADED_FOLDER

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE_CSV = (
    PROJECT_ROOT.parent / "shared" / "data" / "online_retail_ii" / "online_retail_ii_2009_2010.csv.gz"
)


class Settings(BaseSettings):
    """Platform settings; each field is the environment variable `FINEGRAIN_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix="FINEGRAIN_", extra="ignore", frozen=True)

    mongo_uri: str = Field(
        "mongodb://127.0.0.1:27117/?directConnection=true",
        description="MongoDB connection string of the feature store, catalogue and model registry.",
    )
    mongo_database: str = Field("finegrain", description="MongoDB database that holds every collection.")
    redis_url: str = Field(
        "redis://127.0.0.1:16379/0", description="Redis URL of the serving store (indexes, features, caches)."
    )
    zookeeper_hosts: str = Field(
        "127.0.0.1:12181", description="ZooKeeper connection string (host:port[,host:port...])."
    )
    zookeeper_root: str = Field("/finegrain", description="Root znode under which Finegrain keeps its paths.")
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:19092", description="Kafka bootstrap servers (host:port[,host:port...])."
    )
    kafka_topic_prefix: str = Field(
        "finegrain",
        description="Prefix of every Kafka topic name, so several deployments can share a cluster.",
    )
    kafka_session_timeout_ms: int = Field(
        2000,
        description="Consumer-group session timeout; a group join waits half of it, so keep it low locally.",
    )
    kafka_heartbeat_interval_ms: int = Field(500, description="Consumer-group heartbeat interval.")
    spark_master: str = Field(
        "local[*]", description="Spark master URL of the sessions Finegrain starts (`finegrain jobs run`, "
        "the streaming sidecar, a job run with plain python); under spark-submit, its --master instead.")
    spark_driver_java_options: str = Field(
        "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
        description="JVM options of the Spark driver of a batch job (a session Finegrain starts on a local "
        "master, and the DAGs' spark-submits). The default suits jobs of a minute on a few cores: the "
        "C2 compiler and parallel GC threads cost more CPU than they save there (the three offline jobs "
        "side by side on 2 cores: 72-77 s with the JVM's defaults, 41 s with these). Empty: the JVM's "
        "defaults. Never given to the streaming sidecar, which runs for days.")
    spark_cluster_master: str = Field(
        "127.0.0.1:17077", description="host:port of the local Spark standalone master (`finegrain stack up "
        "--spark`); run the jobs on it with FINEGRAIN_SPARK_MASTER=spark://<this>.")
    spark_cluster_master_ui_port: int = Field(18180, ge=1, le=65535,
                                              description="Web UI port of the local Spark master.")
    spark_cluster_worker_ui_port: int = Field(18181, ge=1, le=65535,
                                              description="Web UI port of the local Spark worker.")
    spark_cluster_worker_cores: int = Field(2, ge=1, description="Cores the local Spark worker offers.")
    spark_cluster_worker_memory: str = Field(
        "2g", pattern=r"^[1-9][0-9]*[mg]$",
        description="Memory the local Spark worker offers its executors (e.g. 2g, 1536m).")
    var_dir: Path = Field(
        PROJECT_ROOT / "var", description="Working folder: local stack data, logs, PID files, built data."
    )
    source_csv: Path = Field(
        DEFAULT_SOURCE_CSV, description="The Online Retail II CSV (gzip) that `finegrain data load` reads."
    )

    serving_config: Path | None = Field(
        None, description="JSON serving configuration (channels, quotas, scenes); unset: the defaults."
    )
    api_bind: str = Field("127.0.0.1:18080", description="host:port gunicorn binds the API to.")
    api_workers: int = Field(2, ge=1, description="gunicorn worker processes of the API.")
    api_threads: int = Field(1, ge=1, description="Threads per API worker: 1 runs gunicorn's sync workers "
                             "(CPU-bound requests gain nothing from threads under the GIL), more gthread.")
    api_auth: bool = Field(True, description="Whether the API requires an API key (`finegrain keys`); false "
                           "turns authentication and rate limits off, and the API logs a warning at start.")
    api_key: SecretStr | None = Field(
        None, description="The API key the command line's API clients send as `Authorization: Bearer` "
        "(`finegrain api recommend`, `finegrain replay`, smoke checks); `finegrain keys create` makes one.")
    api_metrics_scope: Literal["recommend", "events", "admin"] = Field(
        "admin", description="Scope a key needs for GET /metrics on FINEGRAIN_API_BIND.")
    api_metrics_bind: str | None = Field(
        None, description="host:port where gunicorn also listens and serves only /metrics (without a key), "
        "/healthz and /readyz: for a Prometheus scraper on a private interface; unset: no such listener.")
    stream_metrics_bind: str = Field(
        "127.0.0.1:18091", description="host:port of the streaming sidecar's Prometheus /metrics (port 0: "
        "any free port, written to its status file).")
    event_archive: str | None = Field(
        None, description="Where the streaming sidecar appends every accepted event (Parquet by event "
        "date) and the nightly ingest reads them: a folder, or a URI pyarrow.fs opens (s3://bucket/prefix, "
        "gs://bucket/prefix, hdfs://host/path; S3 options as query parameters, credentials from the AWS_* "
        "variables); unset: <var dir>/data/archive.")
    tf_serving_model_dir: Path | None = Field(
        None, description="TensorFlow Serving's model folder (a volume TF Serving also mounts; one "
        "sub-folder per model name, as its model_base_path): publishing a TensorFlow ranker writes its "
        "SavedModel version there before announcing it; unset: no deployment (TF in-process).")
    airflow_port: int = Field(
        18280, ge=1, le=65535, description="Port of the local Airflow's api-server (the UI and the "
        "execution API its tasks report to), always bound to 127.0.0.1.")
    airflow_home: Path | None = Field(
        None, description="AIRFLOW_HOME of the local Airflow: its config, SQLite metadata, logs, PID files "
        "and UI password; unset: <var dir>/airflow.")
    # Airflow reads its users as `name:role[,name:role]`, so a name holding ':' or ',' would be two.
    airflow_user: str = Field(
        "admin", pattern=r"^[A-Za-z0-9_.@-]+$", description="The local Airflow UI's user (role admin); "
        "its password is generated on the first `finegrain airflow up`, kept (mode 0600) in the Airflow "
        "home and printed by `up` and `status`.")

    @model_validator(mode="after")
    def _addresses_parse(self) -> Settings:
        """Fail at start-up, naming the variable, rather than at first use deep inside a client."""
        for variable, address in (
            ("FINEGRAIN_REDIS_URL", self.redis_address),
            ("FINEGRAIN_MONGO_URI", self.mongo_address),
            ("FINEGRAIN_ZOOKEEPER_HOSTS", self.zookeeper_address),
            ("FINEGRAIN_KAFKA_BOOTSTRAP_SERVERS", self.kafka_address),
            ("FINEGRAIN_SPARK_CLUSTER_MASTER", self.spark_cluster_address),
            ("FINEGRAIN_API_BIND", self.api_address),
            *([("FINEGRAIN_API_METRICS_BIND", lambda: _split_host_port(self.api_metrics_bind or "", 0))]
              if self.api_metrics_bind else []),
        ):
            try:
                _, port = address()
            except ValueError as exc:
                raise ValueError(f"{variable}: {exc}") from None
            if not 0 < port < 65536:
                raise ValueError(f"{variable}: port {port} is outside 1-65535")
        metrics = self.metrics_address()
        if metrics is not None and metrics[1] == self.api_address()[1]:
            # The API tells its two listeners apart by port: one port for both would open /metrics.
            raise ValueError(f"FINEGRAIN_API_METRICS_BIND {self.api_metrics_bind}: use another port than "
                             f"FINEGRAIN_API_BIND {self.api_bind}")
        return self

    @property
    def data_dir(self) -> Path:
        """Where loaded and generated data sets (Parquet) are written."""
        return self.var_dir / "data"

    @property
    def retail_dir(self) -> Path:
        """Where `finegrain data load` writes the canonical events and catalogue by default."""
        return self.data_dir / LOADED_FOLDER

    @property
    def events_path(self) -> Path:
        """The canonical events every job, training run and evaluation reads unless told otherwise."""
        return self.retail_dir / EVENTS_FILE

    @property
    def catalog_path(self) -> Path:
        return self.retail_dir / CATALOG_FILE

    @property
    def event_archive_location(self) -> str:
        """The streaming sidecar's event archive, a folder or a URI (`finegrain.events.archive`;
        `docs/storage.md`: the archive layout)."""
        return self.event_archive if self.event_archive is not None else str(self.data_dir / "archive")

    @property
    def airflow_dir(self) -> Path:
        """The local Airflow's home (`finegrain.stack.airflow`)."""
        return self.airflow_home if self.airflow_home is not None else self.var_dir / "airflow"

    @property
    def stream_dir(self) -> Path:
        """The streaming sidecar's checkpoint, status file, PID file and log."""
        return self.var_dir / "stream"

    def environment(self) -> dict[str, str]:
        """This process's environment with every FINEGRAIN_* variable taken from these settings: what a
        child process (the API, the sidecar) is started with, so it sees the same settings."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("FINEGRAIN_")}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):  # str() of a secret is its mask
                value = value.get_secret_value()
            if value is not None:
                env[f"FINEGRAIN_{name.upper()}"] = str(value)
        return env

    @property
    def stack_dir(self) -> Path:
        """Where the local stack keeps each server's data, logs and PID file."""
        return self.var_dir / "stack"

    def redis_address(self) -> tuple[str, int]:
        parts = urlsplit(self.redis_url)
        return parts.hostname or "127.0.0.1", parts.port or 6379

    def mongo_address(self) -> tuple[str, int]:
        # A MongoDB URI may list several hosts; the local stack only ever runs the first.
        netloc = urlsplit(self.mongo_uri).netloc.rsplit("@", 1)[-1].split(",")[0]
        return _split_host_port(netloc, 27017)

    def zookeeper_address(self) -> tuple[str, int]:
        return _split_host_port(self.zookeeper_hosts.split(",")[0].split("/")[0], 2181)

    def kafka_address(self) -> tuple[str, int]:
        return _split_host_port(self.kafka_bootstrap_servers.split(",")[0], 9092)

    def spark_cluster_address(self) -> tuple[str, int]:
        return _split_host_port(self.spark_cluster_master, 7077)

    @property
    def spark_cluster_url(self) -> str:
        """The master URL of the local Spark standalone cluster, what FINEGRAIN_SPARK_MASTER or
        spark-submit's --master take to run the jobs there."""
        host, port = self.spark_cluster_address()
        return f"spark://{host}:{port}"

    def api_address(self) -> tuple[str, int]:
        return _split_host_port(self.api_bind, 18080)

    def metrics_address(self) -> tuple[str, int] | None:
        """The /metrics-only listener (FINEGRAIN_API_METRICS_BIND), if one is set."""
        return _split_host_port(self.api_metrics_bind, 18081) if self.api_metrics_bind else None

    def topic(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}.{name}"


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host:
        return text or "127.0.0.1", default_port
    if not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
