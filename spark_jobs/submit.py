"""The spark-submit entry point of every job: `spark-submit spark_jobs/submit.py JOB [JOB ...] --as-of D`.

Jobs are imported by their module name (`spark_jobs.<job>`) rather than run as `__main__`, so the
classes and functions they ship to executors pickle under a name the executors can import. Several
jobs given together share one Spark session (a session costs about 10 s to start).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    from finegrain.console import fail
    from finegrain.jobs import job_main, load_job, registry

    names = []
    for arg in argv:
        if arg.startswith("-"):
            break
        names.append(arg)
    unknown = [name for name in names if name not in registry()]
    if not names or unknown:
        return fail(
            f"name the jobs to run first, from {', '.join(registry())}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        ).exit_code
    return job_main([load_job(name) for name in names], list(argv[len(names) :]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
