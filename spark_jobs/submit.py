"""The spark-submit entry point of every job: `spark-submit spark_jobs/submit.py JOB [JOB ...] --as-of D`.

Jobs are imported by their module name (`spark_jobs.<job>`) rather than run as `__main__`, so the
classes and functions they ship to executors pickle under a name the executors can import. Several
jobs given together share one Spark session (a session costs about 10 s to start). The command itself
is `spark_jobs.runner.submit_main`; this file is only the path spark-submit is given.
"""

from __future__ import annotations

if __name__ == "__main__":
    from spark_jobs.runner import submit_main

    raise SystemExit(submit_main())
