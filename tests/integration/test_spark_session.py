"""The session `finegrain.spark.spark_session` starts: its JVM really runs with the driver options of
the settings (they can only be given as the JVM starts, so a typo in how they are passed would be
silently ignored, not refused)."""

from __future__ import annotations

from pyspark.sql import SparkSession

from finegrain.settings import Settings


def test_the_local_driver_jvm_runs_with_the_configured_java_options(spark: SparkSession,
                                                                    settings: Settings) -> None:
    options = settings.spark_driver_java_options.split()
    assert options, "the default should tune the JVM for short local jobs"
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    arguments = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert [option for option in options if option not in arguments] == []
