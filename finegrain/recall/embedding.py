"""The embedding recall channel's scoring side: user and item vectors and a faiss inner-product index.

Shared by the offline evaluation and serving: `EmbeddingIndex` is what the training run
(`models.embeddings`) serializes into one artifact and what a reader deserializes, so both score the
same way.

- Item vectors live in a faiss inner-product index. For a few thousand items `IndexFlatIP` (exact
  search) is the default: one query is ~4k x 64 multiply-adds, microseconds, so an approximate graph
  would buy no speed and would lose some recall; `IndexHNSWFlat` (METRIC_INNER_PRODUCT) is there for
  a catalogue of hundreds of thousands of items, where a brute-force scan stops being cheap.
- A user's vector is either the one learnt in training (`user_ids` / `user_factors`), or folded in
  from a purchase history with the model's item vectors: the exact ALS user step
  x = (YᵀY + Yᵀ(C - I)Y + λI)⁻¹ YᵀC p, with the same confidence function as training. Folding in
  serves users who joined after training and lets serving use purchases made since.
- Confidence of a (user, item) pair: 1 + alpha * log1p(times_bought * recency), recency =
  0.5 ** (days since last bought / half-life); `confidence` is used by training and fold-in alike.
- The artifact is an `.npz` (no pickle): the serialized faiss index as bytes, the item id order,
  the user ids and vectors, and the parameters as JSON.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np
import pandas as pd

from finegrain.recall.item_to_item import Candidates, History
from finegrain.schemas import PurchaseHistory

CHANNEL = "embedding"
FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "hnsw")


@dataclass(frozen=True)
class ConfidenceParams:
    """How purchases become ALS confidence; shared by training and fold-in."""

    # Tuned on the 2010-10-11 split (never on the test window): a short half-life suits a shop whose
    # customers reorder seasonally; a strong L2 keeps light buyers' vectors from overfitting.
    alpha: float = 10.0
    half_life_days: float = 30.0
    regularization: float = 20.0

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.half_life_days <= 0 or self.regularization <= 0:
            raise ValueError(f"bad confidence parameters {self}: alpha, half-life and regularization "
                             "must be > 0")


def confidence(times_bought: np.ndarray, last_bought_day: np.ndarray, today: int,
               params: ConfidenceParams) -> np.ndarray:
    """1 + alpha * log1p(times_bought * 0.5 ** (age / half-life)): repeated and recent purchases weigh
    more, with the log keeping a wholesaler's dozens of reorders of one item from drowning the rest."""
    age = np.maximum(today - np.asarray(last_bought_day, dtype=np.float64), 0.0)
    weight = np.asarray(times_bought, dtype=np.float64) * np.exp2(-age / params.half_life_days)
    return np.asarray(1.0 + params.alpha * np.log1p(weight), dtype=np.float64)


def build_index(item_factors: np.ndarray, index_type: str = "flat", hnsw_m: int = 32) -> faiss.Index:
    """An inner-product faiss index over the item vectors, in row order (row i is faiss id i)."""
    vectors = np.ascontiguousarray(item_factors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"item factors must be 2-D, got shape {vectors.shape}")
    dim = vectors.shape[1]
    index: faiss.Index
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 256
    else:
        raise ValueError(f"unknown index type {index_type!r}: one of {', '.join(INDEX_TYPES)}")
    index.add(vectors)
    return index


@dataclass
class EmbeddingIndex:
    """Item vectors in a faiss index (row i is `item_ids[i]`), the users' learnt vectors, and the
    parameters needed to fold in a history. `user_ids` is sorted."""

    index: faiss.Index
    item_ids: np.ndarray
    user_ids: np.ndarray
    user_factors: np.ndarray
    params: ConfidenceParams
    index_type: str = "flat"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.index.ntotal != len(self.item_ids):
            raise ValueError(f"the index holds {self.index.ntotal} vectors for {len(self.item_ids)} item ids")
        if len(self.user_ids) != len(self.user_factors):
            raise ValueError(f"{len(self.user_ids)} user ids for {len(self.user_factors)} user vectors")
        if len(self.user_factors) and self.user_factors.shape[1] != self.index.d:
            raise ValueError(f"user vectors have {self.user_factors.shape[1]} dimensions, "
                             f"items {self.index.d}")
        if len(self.user_ids) > 1 and not (self.user_ids[1:] > self.user_ids[:-1]).all():
            raise ValueError("user ids must be sorted and distinct")
        self._item_factors: np.ndarray = np.asarray(self.index.reconstruct_n(0, self.index.ntotal),
                                                    dtype=np.float64)
        self._gram = self._item_factors.T @ self._item_factors
        # A hash index of the ids: serving maps a history to rows on every request.
        self._item_lookup = pd.Index(self.item_ids.astype(str).astype(object))
        if self._item_lookup.has_duplicates:
            raise ValueError("item ids must be distinct")
        self._user_lookup = pd.Index(self.user_ids.astype(str).astype(object))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def item_factors(self) -> np.ndarray:
        return self._item_factors

    def item_rows(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Index row of each id; -1 for an item the model does not know."""
        ids = np.asarray(item_ids if isinstance(item_ids, np.ndarray) else list(item_ids), dtype=object)
        if not len(ids) or not len(self.item_ids):
            return np.full(len(ids), -1, dtype=np.int64)
        return np.asarray(self._item_lookup.get_indexer(ids), dtype=np.int64)

    def user_vectors(self, user_ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, known): the learnt vector of each user, zeros where the user was not in training."""
        ids = np.asarray(list(user_ids), dtype=str).astype(object)
        vectors = np.zeros((len(ids), self.dim), dtype=np.float32)
        if not len(ids) or not len(self.user_ids):
            return vectors, np.zeros(len(ids), dtype=bool)
        position = self._user_lookup.get_indexer(ids)
        known = position >= 0
        vectors[known] = self.user_factors[position[known]]
        return vectors, known

    def fold_in(self, history: PurchaseHistory | History, today: int) -> np.ndarray:
        """The ALS user step for one history against the fixed item vectors (unknown items ignored);
        a zero vector for an empty history."""
        h = History.of(history)
        rows = self.item_rows(h.item_ids)
        known = rows >= 0
        if not known.any():
            return np.zeros(self.dim, dtype=np.float32)
        conf = confidence(h.times_bought[known], h.last_bought_day[known], today, self.params)
        y = self._item_factors[rows[known]]
        a = self._gram + (y.T * (conf - 1.0)) @ y + self.params.regularization * np.eye(self.dim)
        b = y.T @ conf
        return np.linalg.solve(a, b).astype(np.float32)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k item rows and inner products per vector (-1 / -inf past the end of the catalogue)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        scores, rows = self.index.search(queries, min(k, self.index.ntotal))
        if k > self.index.ntotal:
            pad = k - self.index.ntotal
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        scores = np.where(rows >= 0, scores, -np.inf)
        return rows.astype(np.int64), scores

    def recommend(self, k: int, *, user_id: str | None = None,
                  history: PurchaseHistory | History | None = None, today: int | None = None,
                  exclude_bought: bool = False) -> Candidates:
        """One user's top k. With a history (and `today`), the vector is folded in from it, so it
        reflects purchases made since training; otherwise the learnt vector of `user_id`. A user
        with neither gets no candidates (the popularity channel covers cold starts)."""
        h = History.of(history) if history is not None else None
        if h is not None and len(h.item_ids):
            if today is None:
                raise ValueError("folding in a history needs `today` (days since the Unix epoch)")
            vector = self.fold_in(h, today)
        elif user_id is not None:
            vectors, known = self.user_vectors([user_id])
            if not known[0]:
                return Candidates([], np.empty(0))
            vector = vectors[0]
        else:
            return Candidates([], np.empty(0))
        excluded = self.item_rows(h.item_ids) if exclude_bought and h is not None else np.empty(0)
        excluded = excluded[excluded >= 0]
        rows, scores = self.search(vector, k + len(excluded))
        keep = (rows[0] >= 0) & ~np.isin(rows[0], excluded)
        rows_kept, scores_kept = rows[0][keep][:k], scores[0][keep][:k]
        return Candidates(self.item_ids[rows_kept].astype(str).tolist(), scores_kept.astype(np.float64))

    def to_bytes(self) -> bytes:
        """One self-contained artifact (npz, no pickle) for the registry."""
        meta = {"format": FORMAT_VERSION, "index_type": self.index_type, "params": asdict(self.params),
                "info": self.info}
        buffer = io.BytesIO()
        np.savez(buffer,
                 index=faiss.serialize_index(self.index),
                 item_ids=self.item_ids.astype(str),
                 user_ids=self.user_ids.astype(str),
                 user_factors=np.asarray(self.user_factors, dtype=np.float32),
                 meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EmbeddingIndex:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                meta = json.loads(arrays["meta"].tobytes().decode())
                index = faiss.deserialize_index(arrays["index"])
                item_ids, user_ids = arrays["item_ids"], arrays["user_ids"]
                user_factors = arrays["user_factors"]
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ValueError(f"not an embedding artifact: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"embedding artifact format {meta.get('format')}, "
                             f"this code reads {FORMAT_VERSION}")
        return cls(index=index, item_ids=item_ids.astype(object), user_ids=user_ids.astype(object),
                   user_factors=user_factors, params=ConfidenceParams(**meta["params"]),
                   index_type=meta["index_type"], info=meta.get("info", {}))
