"""One way to get a SparkSession, configured for Finegrain's jobs, on `local[*]` or a cluster.

A session takes about 10 s to start here, so chained jobs share the one this returns.

Where the master comes from (the jobs' code is the same for all of them):
- under spark-submit (the DAGs' `SparkSubmitOperator` on the `finegrain_spark` connection, or
  `spark-submit --master URL spark_jobs/submit.py ...`): its `--master`;
- otherwise (`finegrain jobs run`, the streaming sidecar, a job module run with plain python, the
  tests): `FINEGRAIN_SPARK_MASTER` (`Settings.spark_master`).
The settings below are defaults: a `--conf` given to spark-submit (or, in plain python, the SQL ones
given through PYSPARK_SUBMIT_ARGS or spark-defaults.conf) wins, e.g. `spark.sql.shuffle.partitions`
sized for a cluster. Only the session time zone is fixed (UTC: the feature definitions need it).

On a cluster the executors are other processes, possibly on other machines: they run the Python named
by `PYSPARK_PYTHON` (set here to this interpreter unless given; the path must exist on every worker)
and they need the project's code. The session ships it: a zip of the packages job code may import
(`JOB_PACKAGES`, built from the driver's own files) is added with `addPyFile`, so the executors always
run exactly the driver's code, whatever is installed on the workers, with no `--py-files` to pass.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from finegrain.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# The packages a job's executor code can import: `spark_jobs` and the layers below it (the import-linter
# contract of pyproject.toml keeps `serving` and `cli` out of it). Named by folder, not imported: the
# core imports no layer above it.
JOB_PACKAGES = ("finegrain", "models", "spark_jobs")
# A fixed time stamp for every zip entry: the same code gives the same archive, byte for byte.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def spark_session(
    settings: Settings, app_name: str = "finegrain", shuffle_partitions: int | None = None,
    long_running: bool = False,
) -> SparkSession:
    """`long_running`: a session that lives for days (the streaming sidecar) keeps the JVM's own JIT
    and GC; a batch session on a local master starts its JVM with `settings.spark_driver_java_options`."""
    # Executors must run the venv's Python (PySpark's Python data sources need its pyarrow/pandas).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    submitted = submitted_conf()
    master = settings.spark_master if submitted is None else submitted.get("spark.master", "local[*]")
    local = master.startswith("local")
    # Fixed when the context starts: given to the builder, unless spark-submit was given them.
    startup = {
        "spark.app.name": app_name,
        "spark.ui.enabled": "false" if local else "true",
        "spark.ui.showConsoleProgress": "true",
        "spark.local.dir": str(settings.var_dir / "spark-tmp"),
    }
    if submitted is None:
        # The JVM starts with the session here, so its heap is ours to size (spark-submit sizes its own).
        startup["spark.driver.memory"] = os.environ.get("FINEGRAIN_SPARK_DRIVER_MEMORY", "3g")
        if local and not long_running and settings.spark_driver_java_options:
            startup["spark.driver.extraJavaOptions"] = settings.spark_driver_java_options
    # SQL settings: set once the session exists, unless the context's configuration has them, so a
    # `--conf` of spark-submit, of PYSPARK_SUBMIT_ARGS or of spark-defaults.conf wins in every case.
    runtime = {
        # Small data on two cores: the default 200 shuffle partitions would be mostly scheduling.
        "spark.sql.shuffle.partitions": str(shuffle_partitions or (8 if local else 200)),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    builder = SparkSession.builder
    if submitted is None:
        builder = builder.master(master)
    for key, value in startup.items():
        if submitted is None or key not in submitted:
            builder = builder.config(key, value)
    # Not a default: the feature definitions read Spark's naive times as UTC.
    session = builder.config("spark.sql.session.timeZone", "UTC").getOrCreate()
    given = session.sparkContext.getConf()
    for key, value in runtime.items():
        if not given.contains(key):
            session.conf.set(key, value)
    session.sparkContext.setLogLevel("WARN")
    if not local:
        session.sparkContext.addPyFile(str(project_archive(settings.var_dir / "spark-tmp")))
    return session


def submitted_conf() -> dict[str, str] | None:
    """The configuration spark-submit started this driver with (its `--master`, `--conf`s, ...), or None
    when this process was not started by spark-submit."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # how spark-submit hands its JVM to the Python driver
        return None
    from pyspark import SparkConf, SparkContext

    # Connects to spark-submit's JVM (starting nothing); a SparkConf then loads its spark.* properties.
    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def project_archive(directory: Path, root: Path = PROJECT_ROOT) -> Path:
    """A zip of the `JOB_PACKAGES` Python files under `root`, named by its content so that sessions
    running the same code share one file and a changed file gives a new one (written whole, then renamed
    into place: a session never ships a half-written archive). About 200 KB per version of the code."""
    files = sorted(
        (path.relative_to(root).as_posix(), path.read_bytes())
        for package in JOB_PACKAGES
        for path in (root / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )
    if not files:
        raise FileNotFoundError(f"no Python packages {', '.join(JOB_PACKAGES)} under {root}")
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    target = directory / f"finegrain-jobs-{digest.hexdigest()[:16]}.zip"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{target.name}.{os.getpid()}.tmp"
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data, zipfile.ZIP_DEFLATED)
    os.replace(partial, target)
    return target
