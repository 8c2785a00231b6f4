"""From a published manifest and its checksum-verified artifact bytes to the object serving calls."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from finegrain.recall.embedding import EmbeddingIndex
from finegrain.schemas import ModelManifest
from models.registry import untar_artifact
from models.tf_serving import saved_model_version
from serving.ranking.tensorflow import (
    TFInProcessRanker,
    TFServingRanker,
    TFServingRefused,
    TFServingUnavailable,
    check_tf_serving,
)
from serving.ranking.xgboost import XGBoostServingRanker


class ModelLoadError(Exception):
    """A published version this worker cannot serve; it keeps the version it has."""


class ModelServerUnavailable(Exception):
    """The model's server (TF Serving) did not answer: the worker keeps its version and tries again."""


def model_kind(manifest: ModelManifest) -> str:
    framework = manifest.framework.lower()
    if framework in ("xgboost", "tensorflow"):
        return framework
    if framework in ("als", "embeddings", "faiss") or manifest.name.startswith("embeddings"):
        return "embeddings"
    raise ModelLoadError(f"{manifest.name} {manifest.version}: unknown framework {manifest.framework!r}")


def load_model(manifest: ModelManifest, data: bytes, *, tf_serving_url: str | None = None,
               tf_serving_wait_s: float = 30.0, work_dir: Path | None = None) -> Any:
    """Build the scoring object and warm it up on a dummy request, so the first real request after a
    swap does not pay for lazy initialisation. Through TF Serving, the version of the artifact must be
    AVAILABLE there first (ModelServerUnavailable if TF Serving does not answer, ModelLoadError if it
    answers otherwise or the warm-up fails)."""
    kind = model_kind(manifest)
    try:
        if kind == "xgboost":
            ranker = XGBoostServingRanker.from_bytes(data, list(manifest.features))
            _warm_up(ranker, len(manifest.features))
            return ranker
        if kind == "tensorflow":
            if tf_serving_url:
                version = saved_model_version(data)
                try:
                    check_tf_serving(tf_serving_url, manifest.name, version, wait_s=tf_serving_wait_s)
                except TFServingUnavailable as exc:
                    raise ModelServerUnavailable(f"{manifest.name} {manifest.version}: {exc}") from None
                except TFServingRefused as exc:
                    raise ModelLoadError(f"{manifest.name} {manifest.version} refused: {exc}") from None
                served = TFServingRanker(tf_serving_url, manifest.name, version)
                _warm_up(served, len(manifest.features))
                return served
            from models.tf_ranker import TFRanker  # TensorFlow loads only in workers that serve it

            folder = Path(tempfile.mkdtemp(prefix=f"{manifest.name}-{manifest.version}-", dir=work_dir))
            tf_ranker = TFInProcessRanker(TFRanker.load(untar_artifact(data, folder)))
            _warm_up(tf_ranker, len(manifest.features))
            return tf_ranker
        index = EmbeddingIndex.from_bytes(data)
        index.search(np.zeros((1, index.dim), dtype=np.float32), 10)
        return index
    except (ModelLoadError, ModelServerUnavailable):
        raise
    except Exception as exc:  # any failure to build the object means: keep serving the old version
        raise ModelLoadError(f"{manifest.name} {manifest.version} failed to load: {exc}") from exc


def _warm_up(ranker: XGBoostServingRanker | TFInProcessRanker | TFServingRanker, width: int) -> None:
    features = np.zeros((8, width), dtype=np.float32)
    scores = ranker.score(features, np.asarray(["warm-up"] * 8, dtype=object))
    if scores.shape != (8,) or not np.isfinite(scores).all():
        raise ModelLoadError(f"warm-up scores have shape {scores.shape} or are not finite")
