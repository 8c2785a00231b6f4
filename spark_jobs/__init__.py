"""Offline batch jobs, one module per job; each runs under `spark-submit` or `finegrain jobs run`."""

from __future__ import annotations

# name -> "module:class", imported only when the job runs, so listing jobs needs no Spark.
JOBS: dict[str, str] = {
    "features": "spark_jobs.features:FeaturesJob",
    "content_index": "spark_jobs.content_index:ContentIndexJob",
    "item_similarity": "spark_jobs.item_similarity:ItemSimilarityJob",
    "popularity": "spark_jobs.popularity:PopularityJob",
}
