"""One way to get a SparkSession, configured for Finegrain's jobs (local or cluster by settings).

A session takes about 10 s to start here, so chained jobs share the one this returns.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from finegrain.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(
    settings: Settings, app_name: str = "finegrain", shuffle_partitions: int | None = None
) -> SparkSession:
    # Executors must run the venv's Python (PySpark's Python data sources need its pyarrow/pandas).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    local = settings.spark_master.startswith("local")
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        # Small data on two cores: the default 200 shuffle partitions would be mostly scheduling.
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions or (8 if local else 200)))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.enabled", "false" if local else "true")
        .config("spark.ui.showConsoleProgress", "true")
        .config("spark.driver.memory", os.environ.get("FINEGRAIN_SPARK_DRIVER_MEMORY", "3g"))
        .config("spark.local.dir", str(settings.var_dir / "spark-tmp"))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
