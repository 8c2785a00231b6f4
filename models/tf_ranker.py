"""The TensorFlow deep ranker: a DCN-v2 (or Wide&Deep) network over `finegrain.features.ranking` rows
plus an embedding of the candidate's item id, exported as a SavedModel TensorFlow Serving loads as is.

The exported graph takes the raw serving inputs and does its own preprocessing, so no caller (the
in-process ranker, TF Serving, a notebook) can feed it features prepared another way:
- `features: float32[None, len(RANKING_FEATURE_NAMES)]`, the rows `ranking_features` returns, NaN (or
  inf) for unknown values;
- `item_id: string[None]`, one id per row;
- output `{"score": float32[None]}`, the probability that the user buys the item in the label window.
Inside: a missing indicator per feature, `log1p` on the non-negative heavy-tailed columns, a
standardisation fitted on the training rows (missing values then sit at 0, the training mean), and a
`StringLookup` over the training items (rare and unseen ids share one out-of-vocabulary bucket, whose
embedding is trained on the rare items, so an unseen id scores like a rare one rather than arbitrarily).

Layout on disk (`TFRanker.export(folder)`), what TF Serving's `model_base_path` expects:
`folder/<numeric version>/saved_model.pb`, `variables/`, and `assets.extra/finegrain_ranker.json` (the
feature list, the configuration and the metrics; TF Serving ignores assets.extra files it does not know).
REST: `POST /v1/models/<name>:predict {"inputs": {"features": [[...]], "item_id": [...]}}`.

Architecture: Wide&Deep by default (DCN-v2 selectable); `TFRankerConfig` holds the measurement.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from finegrain.evaluation.metrics import ranking_metrics
from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.training.training_set import TrainingSet

# Before TensorFlow is imported: its C++ start-up banner and oneDNN notices are noise in a CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # type: ignore[import-untyped, unused-ignore]
import tensorflow as tf

FORMAT = "tensorflow-savedmodel"
SIGNATURE = "serving_default"
METADATA_FILE = "finegrain_ranker.json"
ARCHITECTURES = ("dcn", "wide_deep")
# Skewness above which a non-negative column is read through log1p. On the real training rows 24 of
# the 43 columns of the time passed (measured before the real-time features): spend, units, prices and
# basket counts (skew 3 to 80), the item-to-item scores (8 to 11); day counts, ranks and the item
# popularity windows (below 1.7) stay linear.
HEAVY_TAIL_SKEW = 2.0
# A standardised value beyond this is an outlier the training rows barely saw: clipped so that one
# absurd input (a bulk order of 80,000 units) cannot dominate the network's output.
CLIP = 8.0


@dataclass(frozen=True)
class TFRankerConfig:
    """Chosen on the validation split (train on the cut-offs 2010-07-13 / 08-12 / 09-11, rank the
    2010-10-11 candidates; XGBoost scores NDCG@20 0.346 there). NDCG@20 / AUC, one run each:
    - DCN-v2 (2 full-rank cross layers + MLP 128-64, item embedding 16): 0.340 / 0.821 (batch 1024),
      0.339 (batch 2048), 0.338 with 3 cross layers and MLP 256-128; without the item embedding 0.343;
    - Wide&Deep (linear part + per-item bias, MLP 128-64 over the features and item embedding 16):
      0.3445 / 0.825 (batch 1024), 0.344 (2048), 0.342 without dropout, 0.343 with MLP 256-128-64,
      0.345 with only the 348 items of 300+ rows embedded (dim 8), 0.346 / 0.830 with the embedding's L2
      at 1e-4 (kept), 0.349 without any item embedding.
    Wide&Deep is kept: it is ahead of DCN-v2 in every pairing (by 0.004-0.006, about the run-to-run noise
    of 0.002-0.005, but consistently), and the rows already carry the crossed signals a cross layer
    would have to find (shares, ratios, user x item counts), so the explicit crosses mostly overfit:
    DCN's held-out NDCG peaks at epoch 2, Wide&Deep's keeps improving to epoch 6-8. The item-id
    embedding costs a little on this split (items' popularity drifts between cut-offs and the dense
    item features already describe them); it stays, regularised, because it is what lets the model
    learn item effects the features miss as the catalogue grows."""

    architecture: str = "wide_deep"
    cross_layers: int = 2
    hidden: tuple[int, ...] = (128, 64)
    embedding_dim: int = 16
    # Items with fewer candidate rows share the out-of-vocabulary embedding (too few rows to learn one).
    min_item_rows: int = 20
    embedding_l2: float = 1e-4
    dropout: float = 0.1
    learning_rate: float = 2e-3
    batch_size: int = 2048
    epochs: int = 8
    patience: int = 2
    holdout_share: float = 0.1
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r}: one of {', '.join(ARCHITECTURES)}")
        if self.epochs < 1 or self.batch_size < 1 or not 0 < self.learning_rate < 1:
            raise ValueError(f"bad TF ranker config {self}")
        if not 0 < self.holdout_share < 1:
            raise ValueError(f"holdout_share must be in (0, 1), not {self.holdout_share}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TFRankerConfig:
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        if "hidden" in kept:
            kept["hidden"] = tuple(kept["hidden"])
        return cls(**kept)


def configure_threads(threads: int) -> bool:
    """Cap TensorFlow's thread pools (several gunicorn workers share 2 cores). Only possible before
    TensorFlow's runtime starts: returns False when it already had (the first caller's setting holds)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# Preprocessing, fitted on the training rows and carried inside the graph.


@dataclass(frozen=True)
class Preprocessing:
    log: np.ndarray  # per feature, bool: read through log1p
    mean: np.ndarray  # per feature, of the (logged) observed values
    scale: np.ndarray  # per feature, their standard deviation (1 where constant)

    @classmethod
    def fit(cls, features: np.ndarray) -> Preprocessing:
        """Per feature, over its observed (finite) values: read through log1p when non-negative and
        heavy-tailed, then the mean and standard deviation. A column never observed reads as all zeros
        (mean 0, scale 1). One column at a time: whole-matrix masked statistics copied the float64
        matrix at every step (9 s for 863k rows here, against 3 s this way, same values)."""
        columns = np.asarray(features).T
        log = np.zeros(len(columns), dtype=bool)
        mean = np.zeros(len(columns))
        scale = np.ones(len(columns))
        for j, column in enumerate(columns):
            values = column.astype(np.float64)
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            centred = values - values.mean()
            std = np.sqrt((centred ** 2).mean())
            skew = (centred ** 3).mean() / std ** 3 if std > 0 else 0.0
            log[j] = values.min() >= 0 and skew > HEAVY_TAIL_SKEW
            logged = np.log1p(values) if log[j] else values
            mean[j], scale[j] = logged.mean(), logged.std()
        return cls(log, mean.astype(np.float32), np.where(scale > 1e-6, scale, 1.0).astype(np.float32))

    def as_dict(self) -> dict[str, Any]:
        return {"log1p": [name for name, on in zip(RANKING_FEATURE_NAMES, self.log, strict=True) if on]}


@keras.saving.register_keras_serializable(package="finegrain")
class RawFeatures(keras.layers.Layer):  # type: ignore[misc]
    """Raw rows -> standardised values (0 where missing) next to one missing indicator per feature."""

    def __init__(self, log: Sequence[bool] | np.ndarray, mean: Sequence[float] | np.ndarray,
                 scale: Sequence[float] | np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_mask = [bool(v) for v in log]
        self.mean_values = [float(v) for v in mean]
        self.scale_values = [float(v) for v in scale]

    def build(self, input_shape: Any) -> None:
        width = len(self.mean_values)
        # Weights (not constants) so the fitted values are saved and visible in the variables.
        self.log = self.add_weight(shape=(width,), initializer=keras.initializers.Constant(
            np.asarray(self.log_mask, np.float32)), trainable=False, name="log1p")
        self.mean = self.add_weight(shape=(width,), initializer=keras.initializers.Constant(
            np.asarray(self.mean_values, np.float32)), trainable=False, name="mean")
        self.scale = self.add_weight(shape=(width,), initializer=keras.initializers.Constant(
            np.asarray(self.scale_values, np.float32)), trainable=False, name="scale")

    def call(self, features: Any) -> Any:
        ops = keras.ops
        missing = ops.logical_not(ops.isfinite(features))
        raw = ops.where(missing, ops.zeros_like(features), features)
        logged = ops.where(self.log > 0.5, ops.log1p(ops.maximum(raw, 0.0)), raw)
        scaled = ops.clip((logged - self.mean) / self.scale, -CLIP, CLIP)
        scaled = ops.where(missing, ops.zeros_like(scaled), scaled)
        return ops.concatenate([scaled, ops.cast(missing, "float32")], axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "log": self.log_mask, "mean": self.mean_values,
                "scale": self.scale_values}


@keras.saving.register_keras_serializable(package="finegrain")
class Cross(keras.layers.Layer):  # type: ignore[misc]
    """One DCN-v2 cross layer: x_{l+1} = x_0 * (W x_l + b) + x_l (explicit feature interactions)."""

    def build(self, input_shape: Any) -> None:
        width = int(input_shape[0][-1])
        self.dense = keras.layers.Dense(width, kernel_initializer="glorot_uniform")
        self.dense.build((None, width))

    def call(self, inputs: Any) -> Any:
        x0, x = inputs
        return x0 * self.dense(x) + x


def build_model(preprocessing: Preprocessing, vocabulary: Sequence[str], config: TFRankerConfig
                ) -> keras.Model:
    width = len(RANKING_FEATURE_NAMES)
    features = keras.Input(shape=(width,), dtype="float32", name="features")
    item_id = keras.Input(shape=(), dtype="string", name="item_id")
    dense = RawFeatures(preprocessing.log, preprocessing.mean, preprocessing.scale,
                        name="raw_features")(features)
    lookup = keras.layers.StringLookup(vocabulary=list(vocabulary), num_oov_indices=1, name="item_lookup")
    index = lookup(item_id)
    embedded = keras.layers.Embedding(len(vocabulary) + 1, config.embedding_dim, name="item_embedding",
                                      embeddings_regularizer=keras.regularizers.L2(config.embedding_l2))(index)
    x0 = keras.layers.Concatenate(name="inputs")([dense, embedded])
    deep = x0
    if config.architecture == "dcn":
        for layer in range(config.cross_layers):
            deep = Cross(name=f"cross_{layer}")([x0, deep])
    for layer, units in enumerate(config.hidden):
        deep = keras.layers.Dense(units, activation="relu", name=f"hidden_{layer}")(deep)
        if config.dropout:
            deep = keras.layers.Dropout(config.dropout, seed=config.seed + layer)(deep)
    logit = keras.layers.Dense(1, name="deep_logit")(deep)
    if config.architecture == "wide_deep":
        # The wide part: a linear model of the dense features plus a bias per item.
        wide = keras.layers.Dense(1, name="wide_logit")(dense)
        item_bias = keras.layers.Embedding(len(vocabulary) + 1, 1, name="item_bias",
                                           embeddings_initializer="zeros")(index)
        logit = keras.layers.Add(name="logit")([logit, wide, item_bias])
    score = keras.layers.Activation("sigmoid", name="score")(keras.layers.Reshape(())(logit))
    return keras.Model({"features": features, "item_id": item_id}, score,
                       name=f"ranker_{config.architecture}")


# ---------------------------------------------------------------------------------------------------
# The ranker serving loads: the exported signature, nothing else.


def _version_folder(path: Path) -> Path:
    """`path` itself when it holds saved_model.pb, else its highest numeric sub-folder (TF Serving's
    rule for a model base path)."""
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted((int(p.name), p) for p in path.glob("*") if p.name.isdigit()
                      and (p / "saved_model.pb").is_file()) if path.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"no SavedModel at {path} (expected {path}/<version>/saved_model.pb)")
    return versions[-1][1]


class TFRanker:
    def __init__(self, loaded: Any, metadata: dict[str, Any]) -> None:
        names = tuple(metadata.get("feature_names", ()))
        if names != RANKING_FEATURE_NAMES:
            missing = sorted(set(names) - set(RANKING_FEATURE_NAMES))
            raise ValueError(f"the model's {len(names)} features do not match the serving feature layout "
                             f"({len(RANKING_FEATURE_NAMES)}; unknown to serving: {missing[:5]})")
        self._loaded = loaded  # holds the variables and lookup table the signature reads
        self._serve = loaded.signatures[SIGNATURE]
        self.metadata = metadata
        self.feature_names = names

    @classmethod
    def load(cls, path: Path | str, threads: int | None = 1) -> TFRanker:
        """From a SavedModel version folder or a TF Serving base folder (its highest version)."""
        if threads is not None:
            configure_threads(threads)
        folder = _version_folder(Path(path))
        meta_path = folder / "assets.extra" / METADATA_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} lacks assets.extra/{METADATA_FILE} (not a Finegrain ranker)")
        loaded = tf.saved_model.load(str(folder))
        return cls(loaded, json.loads(meta_path.read_text()))

    @property
    def config(self) -> TFRankerConfig:
        return TFRankerConfig.from_dict(self.metadata.get("config", {}))

    def score(self, features: np.ndarray, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """One score per row (higher = rank first), through the exported signature."""
        rows = np.asarray(features, dtype=np.float32)
        ids = np.asarray(item_ids).astype(str)
        if rows.ndim != 2 or rows.shape[1] != len(self.feature_names) or len(ids) != len(rows):
            raise ValueError(f"features {rows.shape} and {len(ids)} item ids: expected (n, "
                             f"{len(self.feature_names)}) and n")
        if not len(rows):
            return np.zeros(0, dtype=np.float64)
        out = self._serve(features=tf.constant(rows), item_id=tf.constant(ids))
        return np.asarray(out["score"].numpy(), dtype=np.float64)

    def export(self, folder: Path | str, version: int = 1) -> Path:
        """Write `folder/<version>/` (replacing that version if present); returns the version folder."""
        if version < 0:
            raise ValueError(f"TF Serving versions are non-negative integers, not {version}")
        target = Path(folder) / str(version)
        if target.exists():
            shutil.rmtree(target)
        tf.saved_model.save(self._loaded, str(target), signatures={SIGNATURE: self._serve})
        extra = target / "assets.extra"
        extra.mkdir(parents=True, exist_ok=True)
        (extra / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2, sort_keys=True))
        return target


def export_model(model: keras.Model, folder: Path, metadata: dict[str, Any], version: int = 1) -> Path:
    """The trained Keras model as a serving SavedModel with the fixed signature (the Keras object
    itself is not saved: serving needs the graph only)."""
    target = Path(folder) / str(version)
    if target.exists():
        shutil.rmtree(target)
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(features: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        score = model({"features": features, "item_id": item_id}, training=False)
        return {"score": tf.reshape(tf.cast(score, tf.float32), [-1])}

    archive.add_endpoint(SIGNATURE, serve, input_signature=[
        tf.TensorSpec([None, len(RANKING_FEATURE_NAMES)], tf.float32, name="features"),
        tf.TensorSpec([None], tf.string, name="item_id"),
    ])
    archive.write_out(str(target), verbose=False)
    extra = target / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return target


# ---------------------------------------------------------------------------------------------------
# Training.


@dataclass
class TFTraining:
    ranker: TFRanker
    facts: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)


def group_ndcg(scores: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray, n_targets: np.ndarray,
               k: int = 20) -> float:
    """NDCG@k of each group's ranking by score (targets outside the candidates count), mean over groups."""
    group = np.repeat(np.arange(len(group_sizes)), group_sizes)
    order = np.lexsort((np.arange(len(scores)), -scores, group))
    starts = np.concatenate([[0], np.cumsum(group_sizes)[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, group_sizes)
    keep = position < k
    hits = np.zeros((len(group_sizes), k), dtype=bool)
    hits[group[order][keep], position[keep]] = labels[order][keep] > 0
    return float(ranking_metrics(hits, n_targets, (k,))[f"NDCG@{k}"])


def _dataset(features: np.ndarray, item_ids: np.ndarray, labels: np.ndarray | None, batch: int,
             shuffle_seed: int | None = None) -> tf.data.Dataset:
    inputs = {"features": features.astype(np.float32), "item_id": item_ids.astype(str)}
    data = tf.data.Dataset.from_tensor_slices(inputs if labels is None else
                                              (inputs, labels.astype(np.float32)))
    if shuffle_seed is not None:
        data = data.shuffle(len(features), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.batch(batch).prefetch(2)


class _StopOnNdcg(keras.callbacks.Callback):  # type: ignore[misc]
    """Early stopping on the held-out users' NDCG@20 (what the gate compares), keeping the best epoch."""

    def __init__(self, holdout: TrainingSet, batch: int, patience: int) -> None:
        super().__init__()
        self.data = _dataset(holdout.features, holdout.item_ids, None, batch * 4)
        self.holdout = holdout
        self.patience = patience
        self.best = -np.inf
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None
        self.scores: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        predicted = np.asarray(self.model.predict(self.data, verbose=0), dtype=np.float64).ravel()
        value = group_ndcg(predicted, self.holdout.labels, self.holdout.group_sizes, self.holdout.n_targets)
        self.scores.append(value)
        if logs is not None:
            logs["holdout_ndcg@20"] = value
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            self.best_weights = self.model.get_weights()
        elif epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def subset(rows: TrainingSet, groups: np.ndarray) -> TrainingSet:
    """The rows of the selected groups (a boolean per group), groups kept in order."""
    row_mask = np.repeat(groups, rows.group_sizes)
    return TrainingSet(rows.features[row_mask], rows.labels[row_mask], rows.item_ids[row_mask],
                       rows.group_users[groups], rows.group_cutoffs[groups], rows.group_sizes[groups],
                       rows.n_targets[groups], rows.feature_names)


# Stands for "no item was frequent enough": a lookup needs one entry, and no real id looks like this.
NO_ITEM = "<no-item>"


def item_vocabulary(item_ids: np.ndarray, min_rows: int) -> list[str]:
    ids, counts = np.unique(np.asarray(item_ids).astype(str), return_counts=True)
    return sorted(ids[counts >= min_rows].tolist()) or [NO_ITEM]


def train_tf_ranker(train: TrainingSet, config: TFRankerConfig | None = None,
                    say: Any = None, *, fixed_epochs: int | None = None) -> TFTraining:
    """Fit on `train` minus a held-out sample of its users (early stopping), export the best epoch and
    load it back: the returned ranker scores through the very graph that serving loads.

    `fixed_epochs`: fit on every user for exactly that many epochs instead, with no held-out users
    (the refit of a recipe whose epoch count early stopping already chose on earlier data)."""
    config = config or TFRankerConfig()
    if fixed_epochs is not None and fixed_epochs < 1:
        raise ValueError(f"fixed_epochs must be at least 1, not {fixed_epochs}")
    if tuple(train.feature_names) != RANKING_FEATURE_NAMES:
        raise ValueError("the training set was built with another feature layout than the serving code's")
    if not train.labels.any():
        raise ValueError("the training set has no positive label")
    configure_threads(config.threads)
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    # Whole users are held out, so a user's candidates are never split between fitting and stopping.
    if fixed_epochs is None:
        held = np.random.default_rng(config.seed).random(len(train.group_sizes)) < config.holdout_share
        if held.all() or not held.any():
            held[:] = False
            held[0] = True
    else:
        held = np.zeros(len(train.group_sizes), dtype=bool)
    fit_rows = subset(train, ~held)
    preprocessing = Preprocessing.fit(fit_rows.features)
    vocabulary = item_vocabulary(fit_rows.item_ids, config.min_item_rows)
    model = build_model(preprocessing, vocabulary, config)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=keras.losses.BinaryCrossentropy())
    stopper = None if fixed_epochs else _StopOnNdcg(subset(train, held), config.batch_size, config.patience)

    class _Say(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            held_out = "" if stopper is None else f", held-out NDCG@20 {stopper.scores[-1]:.4f}"
            line = (f"epoch {epoch + 1}: loss {(logs or {}).get('loss', float('nan')):.4f}{held_out} "
                    f"({time.perf_counter() - started:.0f} s)")
            if say is not None:
                say(line)

    history = model.fit(
        _dataset(fit_rows.features, fit_rows.item_ids, fit_rows.labels, config.batch_size,
                 shuffle_seed=config.seed),
        epochs=config.epochs if fixed_epochs is None else fixed_epochs, verbose=0, shuffle=False,
        callbacks=[callback for callback in (stopper, _Say()) if callback is not None])
    seconds = time.perf_counter() - started
    epochs_run = len(history.history.get("loss", []))
    facts: dict[str, Any] = {
        "train_seconds": round(seconds, 2), "train_rows": len(fit_rows.labels),
        "train_groups": len(fit_rows.group_sizes), "train_positives": int(fit_rows.labels.sum()),
        "holdout_groups": int(held.sum()),
        "holdout_ndcg@20": None if stopper is None else round(stopper.best, 4),
        "epochs_run": epochs_run, "best_epoch": epochs_run if stopper is None else stopper.best_epoch + 1,
        "vocabulary": len(vocabulary), "parameters": int(model.count_params()),
    }
    metadata = {"format": FORMAT, "feature_names": list(RANKING_FEATURE_NAMES), "config": asdict(config),
                "preprocessing": preprocessing.as_dict(), "facts": facts, "signature": signature_spec()}
    with tempfile.TemporaryDirectory(prefix="tf_ranker_") as folder:
        export_model(model, Path(folder), metadata)
        ranker = TFRanker.load(folder, threads=None)
    curves = {name: [float(v) for v in values] for name, values in history.history.items()}
    if stopper is not None:
        curves["holdout_ndcg@20"] = stopper.scores
    return TFTraining(ranker, facts, curves)


def signature_spec() -> dict[str, Any]:
    """The serving signature, as documented in the metadata (and checked by the tests)."""
    return {"name": SIGNATURE,
            "inputs": {"features": {"dtype": "float32", "shape": [None, len(RANKING_FEATURE_NAMES)]},
                       "item_id": {"dtype": "string", "shape": [None]}},
            "outputs": {"score": {"dtype": "float32", "shape": [None]}}}
