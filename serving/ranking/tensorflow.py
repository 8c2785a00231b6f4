"""The TensorFlow deep ranker: in-process (the SavedModel's serving signature) by default, or through
TensorFlow Serving's REST API when `tf_serving_url` is configured (the same SavedModel, unchanged)."""

from __future__ import annotations

import json
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


class TFServingRanker(Ranker):
    """Scores through `POST {url}/v1/models/{name}:predict` (columnar `inputs` format)."""

    kind = "tf"

    def __init__(self, url: str, name: str, timeout_s: float = 0.2) -> None:
        self.endpoint = f"{url.rstrip('/')}/v1/models/{name}:predict"
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
