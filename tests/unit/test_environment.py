"""The pinned environment: the generated protobuf code is current, and pyspark is whole."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path


def test_committed_protobuf_code_is_not_stale(project_root: Path, tmp_path: Path) -> None:
    subprocess.run(
        [str(project_root / "bin" / "gen-proto"), str(tmp_path)],
        check=True,
        env={"FINEGRAIN_PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    generated = sorted(p.name for p in (tmp_path / "finegrain" / "schemas").iterdir())
    committed_dir = project_root / "finegrain" / "schemas"
    assert generated, "protoc generated nothing"
    stale = [
        name
        for name in generated
        if not (committed_dir / name).exists()
        or not filecmp.cmp(tmp_path / "finegrain" / "schemas" / name, committed_dir / name, shallow=False)
    ]
    assert not stale, f"finegrain/schemas is stale for {stale}: run bin/gen-proto and commit"


def test_pyspark_is_whole_not_the_connect_only_client() -> None:
    # pyspark-client (a dependency of the Airflow Spark provider) would overwrite pyspark's files with
    # the Spark Connect-only subset, which has no JVM gateway and no bundled Spark jars.
    import pyspark

    package = Path(pyspark.__file__).parent
    assert (package / "jars").is_dir() and any((package / "jars").glob("spark-core_*.jar"))
    assert (package / "bin" / "spark-submit").exists()
    from importlib.metadata import PackageNotFoundError, version

    from pyspark.java_gateway import launch_gateway  # noqa: F401  (absent from pyspark-client)

    assert version("pyspark").startswith("4.")
    try:
        version("pyspark-client")
    except PackageNotFoundError:
        pass
    else:
        raise AssertionError(
            "pyspark-client is installed: it overwrites pyspark (see requirements/no-deps.txt)"
        )


def test_spark_provider_imports() -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    assert SparkSubmitOperator.template_fields
