"""`/healthz` (the process answers), `/readyz` (it has what it needs to serve), `/metrics`."""

from __future__ import annotations

import os
from typing import ClassVar

import falcon

from finegrain.apikeys import Scope
from serving import metrics
from serving.api.auth import OPEN, Access
from serving.scenes import RANKER_MODELS
from serving.swap import Runtime


class HealthResource:
    auth: ClassVar[Access] = {"GET": OPEN}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "pid": os.getpid(), "master_pid": os.getppid()}


class ReadyResource:
    """Ready = a dataset snapshot and the default scene's ranker are loaded. Other missing models
    only degrade their scenes, and are listed."""

    auth: ClassVar[Access] = {"GET": OPEN}

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        runtime = self.runtime
        config = runtime.config
        default_ranker = config.scenes[config.default_scene].ranker
        needed = [] if default_ranker == "none" else [RANKER_MODELS[default_ranker]]
        loaded = runtime.models.versions()
        missing = [name for name in needed if name not in loaded]
        if runtime.data is None:
            missing.insert(0, "datasets")
        optional = [name for name in runtime.model_names if name not in loaded and name not in needed]
        body = {**runtime.status(), "ready": not missing, "missing": missing, "optional_missing": optional}
        resp.status = falcon.HTTP_200 if not missing else falcon.HTTP_503
        resp.media = body


class MetricsResource:
    """Needs a key with `scope` (FINEGRAIN_API_METRICS_SCOPE), except on the metrics listener."""

    def __init__(self, scope: Scope = Scope.ADMIN) -> None:
        self.auth: Access = {"GET": scope}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        body, content_type = metrics.render()
        resp.data = body
        resp.content_type = content_type
