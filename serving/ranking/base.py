"""The ranker interface serving calls per request: scores for a candidates x features matrix."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Contribution:
    feature: str
    value: float
    contribution: float


class Ranker(ABC):
    """Scores candidates; higher ranks first. Implementations are immutable after loading, so one
    object serves every thread of a worker."""

    kind: str

    @abstractmethod
    def score(self, features: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """One score per row of `features` (float32, `RANKING_FEATURE_NAMES` columns)."""

    def explain(self, features: np.ndarray, top: int) -> list[list[Contribution]]:
        """Per row, the `top` features that moved its score most (by absolute contribution)."""
        return [[] for _ in range(len(features))]
