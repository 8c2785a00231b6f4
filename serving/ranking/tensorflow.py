"""The TensorFlow deep ranker: in-process (the SavedModel's serving signature) by default, or through
TensorFlow Serving's REST API when `tf_serving_url` is configured (the same SavedModel, unchanged).

Through TF Serving, a worker scores with exactly the version of the manifest it loaded
(`/v1/models/{name}/versions/{version}:predict`), and loading checks first that TF Serving answers
and reports that version AVAILABLE (`check_tf_serving`): a dead TF Serving, a server that is not one,
or one without the version is a refused load, not a ready worker whose every request waits for a
timeout. The publish step deploys the version into TF Serving's model folder (`models.tf_serving`)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from serving.ranking.base import Ranker


class TFInProcessRanker(Ranker):
    kind = "tf"

    def __init__(self, model: Any) -> None:
        self.model = model  # models.tf_ranker.TFRanker

    def score(self, features: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        if not len(features):
            return np.empty(0)
        return np.asarray(self.model.score(features, item_ids), dtype=np.float64)


class TFServingUnavailable(Exception):
    """TF Serving did not answer (refused, timed out): the load is retried later."""


class TFServingRefused(Exception):
    """TF Serving answered, but is not serving the version (or is no TF Serving at all)."""


def version_state(body: Any, version: int) -> str:
    """The state TF Serving's model status answer (`GET /v1/models/{name}/versions/{v}`) gives
    `version` ("AVAILABLE", "LOADING", ...); raises TFServingRefused for an answer of another shape."""
    statuses = body.get("model_version_status") if isinstance(body, dict) else None
    if not isinstance(statuses, list):
        raise TFServingRefused(f"the answer is not TF Serving's model status: {str(body)[:200]}")
    for status in statuses:
        if isinstance(status, dict) and str(status.get("version")) == str(version):
            return str(status.get("state", "UNKNOWN"))
    return "ABSENT"


def check_tf_serving(url: str, name: str, version: int, *, wait_s: float = 30.0,
                     timeout_s: float = 2.0) -> None:
    """Return once TF Serving at `url` reports `name` version `version` AVAILABLE. TF Serving polls its
    model folder and loads a new version in seconds, so a version not (yet) there is asked again until
    `wait_s`; then it raises TFServingRefused (TF Serving answered otherwise) or TFServingUnavailable
    (it never answered)."""
    endpoint = f"{url.rstrip('/')}/v1/models/{name}/versions/{version}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(endpoint, timeout=timeout_s) as response:
                state = version_state(json.loads(response.read()), version)
            problem: Exception = TFServingRefused(f"TF Serving at {url} reports {name} version {version} "
                                                  f"{state}, not AVAILABLE")
            if state == "AVAILABLE":
                return
        except urllib.error.HTTPError as exc:  # 404: TF Serving has no such model or version (yet)
            detail = exc.read()[:200].decode(errors="replace")
            problem = TFServingRefused(f"TF Serving at {url} answered {exc.code} for {name} version "
                                       f"{version}: {detail}")
        except json.JSONDecodeError:
            problem = TFServingRefused(f"{url} is not TF Serving: its answer to {endpoint} is not JSON")
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out, not HTTP at all
            reason = getattr(exc, "reason", exc)
            problem = (TFServingRefused(f"{url} is not TF Serving (no HTTP answer: {reason})")
                       if "http" in str(reason).lower() or "status line" in str(reason).lower()
                       else TFServingUnavailable(f"TF Serving at {url} is unreachable: {reason}"))
        if time.monotonic() >= deadline:
            raise problem
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


class TFServingRanker(Ranker):
    """Scores through `POST {url}/v1/models/{name}/versions/{version}:predict` (columnar `inputs`)."""

    kind = "tf"

    def __init__(self, url: str, name: str, version: int, timeout_s: float = 0.2) -> None:
        self.endpoint = f"{url.rstrip('/')}/v1/models/{name}/versions/{version}:predict"
        self.version = version
        self.timeout_s = timeout_s

    def score(self, features: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        if not len(features):
            return np.empty(0)
        # NaN (an unknown value) is written as the bare `NaN` token, which TF Serving's JSON parser
        # accepts; the graph's own preprocessing then treats it as missing, as in-process.
        body = json.dumps({"inputs": {"features": np.asarray(features, dtype=np.float64).tolist(),
                                      "item_id": [str(i) for i in item_ids]}}).encode()
        request = urllib.request.Request(self.endpoint, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            outputs = json.loads(response.read())["outputs"]
        scores = outputs["score"] if isinstance(outputs, dict) else outputs
        return np.asarray(scores, dtype=np.float64).ravel()
