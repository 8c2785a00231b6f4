"""Offline batch jobs, one module per job; each runs under `spark-submit` or `finegrain jobs run`.

The job interface and life cycle are `spark_jobs.base`; loading and running jobs and their
spark-submit entries are `spark_jobs.runner` (see `spark_jobs/README.md`).
"""

from __future__ import annotations

# name -> "module:class", imported only when the job runs, so listing jobs needs no Spark. The nightly
# DAG submits exactly these (tests/unit/test_dag_folder.py).
JOBS: dict[str, str] = {
    "features": "spark_jobs.features:FeaturesJob",
    "content_index": "spark_jobs.content_index:ContentIndexJob",
    "item_similarity": "spark_jobs.item_similarity:ItemSimilarityJob",
    "popularity": "spark_jobs.popularity:PopularityJob",
}
