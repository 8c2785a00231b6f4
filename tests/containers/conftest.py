"""The container tier (marker `containers`, run by bin/test-containers): Finegrain's images, built by
docker/build, run with podman on the host network against the real local stack, in the test session's
own namespaces (the integration tier's fixtures)."""

from __future__ import annotations

# The integration tier's session fixtures: the local stack, the namespaces, the real data, one Spark.
from tests.integration.conftest import retail_data, settings, spark, stack  # noqa: F401
