"""Offline evaluation of the recall channels, each alone, on the data set README's protocol.

It scores what serving would use: the MostPop list is the popularity job's `global:all@all` list and
the item-to-item channel scores users with the similarity job's lists, both read from Redis for a
version built as of the split date; the content channel runs `finegrain.recall.content` over the
index job's postings with the profiles `finegrain.features.user` gives as of the split; the ALS
channel is trained on the train window (`models.embeddings`). Which versions to read is the caller's
business (`spark_jobs.ensure` builds them): this module only reads and scores.

`evaluate_channels` is `finegrain evaluate channels` (MostPop and item-to-item next to the README's
reference rows, with its own Markdown + PNG report); the single-channel rankings below feed
`models.evaluate_all`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from finegrain.console import Step, quiet
from finegrain.dates import rows_before
from finegrain.errors import DataError
from finegrain.evaluation.protocol import (
    DEFAULT_KS,
    REFERENCE_NOTE,
    EvaluationSplit,
    build_split,
    load_events,
    reference_rows,
)
from finegrain.evaluation.report import fmt
from finegrain.features.catalog import item_attributes_as_of
from finegrain.recall.content import ContentConfig, RedisPostings, wanted_postings
from finegrain.recall.content import recommend as recommend_content
from finegrain.recall.item_to_item import (
    ItemToItemConfig,
    NeighbourMatrix,
    read_neighbour_lists,
    score_users,
    seed_matrix,
)
from finegrain.schemas import ScoredItemList
from finegrain.settings import Settings
from finegrain.storage.clients import redis_client
from finegrain.storage.contract import RedisKeys
from finegrain.storage.lists import read_list
from finegrain.training.candidates import MOST_POPULAR_NAME, MOST_POPULAR_SCOPE

VARIANTS = ("standard", "explore")
METRICS = tuple(f"{name}@{k}" for k in DEFAULT_KS for name in ("HR", "Recall", "NDCG"))
SIMILARITY_ALGORITHMS = ("cosine", "swing")


@dataclass
class ChannelEvaluation:
    as_of: date
    events_path: Path
    versions: dict[str, str]
    rebuilt: list[str]  # jobs run first to build the datasets evaluated
    users: dict[str, int]
    # variant -> channel -> metric -> value
    figures: dict[str, dict[str, dict[str, float]]]
    seconds: float = 0.0
    short_lists: dict[str, dict[str, int]] = field(default_factory=dict)
    # variant -> the data set README's rows, when the split is its own (`protocol.reference_rows`)
    reference: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "events": str(self.events_path),
            "versions": self.versions,
            "rebuilt": self.rebuilt,
            "users": self.users,
            "channels": self.figures,
            "short_lists": self.short_lists,
            "reference": self.reference,
            "seconds": round(self.seconds, 2),
        }


def most_popular_list(settings: Settings, version: str) -> ScoredItemList:
    """The popularity job's MostPop list (distinct buyers over the whole history) of a version."""
    key = RedisKeys.popular_items(version, MOST_POPULAR_SCOPE, MOST_POPULAR_NAME)
    stored = read_list(redis_client(settings), key)
    if stored is None or not len(stored.item_ids):
        raise DataError(f"no MostPop list at {key}: rebuild the popularity dataset (--rebuild)")
    return stored


def most_popular_ranking(settings: Settings, version: str, split: EvaluationSplit) -> np.ndarray:
    return split.global_ranking(list(most_popular_list(settings, version).item_ids))


def item_to_item_ranking(neighbours: NeighbourMatrix, split: EvaluationSplit, k: int,
                         config: ItemToItemConfig) -> np.ndarray:
    """Every evaluated user's top k from their train history, as candidate indices (-1 padded)."""
    return item_to_item_scored(neighbours, split, k, config)[0]


def item_to_item_scored(neighbours: NeighbourMatrix, split: EvaluationSplit, k: int,
                        config: ItemToItemConfig) -> tuple[np.ndarray, np.ndarray]:
    """`item_to_item_ranking` with the channel's scores (users x k, 0 past the end)."""
    h = split.history
    rows = neighbours.index(split.items[h.item])
    known = rows >= 0
    n_users, n_items = len(split.users), len(neighbours.item_ids)
    seeds = seed_matrix(h.user[known], rows[known], h.times_bought[known], h.last_bought_day[known],
                        n_users, n_items, split.today, config)
    bought = None
    if split.explore:
        bought = sp.csr_matrix((np.ones(int(known.sum())), (h.user[known], rows[known])),
                               shape=(n_users, n_items))
    top, scores = score_users(seeds, neighbours, k, exclude_bought=bought, config=config)
    # Map the neighbour matrix's ids to candidate indices once, not once per (user, position).
    to_candidate = split.item_index(neighbours.item_ids)
    return np.where(top >= 0, to_candidate[np.maximum(top, 0)], -1), scores


def evaluate_channels(settings: Settings, as_of: date, events_path: Path, versions: Mapping[str, str], *,
                      config: ItemToItemConfig | None = None, step: Step = quiet,
                      rebuilt: Sequence[str] = ()) -> ChannelEvaluation:
    """MostPop and item-to-item (cosine, Swing) on both variants, from the popularity and similarity
    `versions` (built as of `as_of`: `spark_jobs.ensure.ensure_datasets`); `rebuilt` is reported."""
    started = time.perf_counter()
    say = step
    config = config or ItemToItemConfig()
    say(f"reading events from {events_path}")
    events = load_events(events_path)
    k = max(DEFAULT_KS)
    splits = {}
    for variant in VARIANTS:
        say(f"splitting at {as_of} ({variant})")
        splits[variant] = build_split(events, as_of, explore=variant == "explore")
    reference = {variant: rows for variant in splits if (rows := reference_rows(events, as_of, variant))}
    del events
    figures: dict[str, dict[str, dict[str, float]]] = {variant: {} for variant in VARIANTS}
    short: dict[str, dict[str, int]] = {variant: {} for variant in VARIANTS}
    say("scoring MostPop")
    for variant, split in splits.items():
        ranked = most_popular_ranking(settings, versions["popularity"], split)
        figures[variant]["MostPop"] = split.evaluate(ranked)
    client = redis_client(settings)
    for algorithm in SIMILARITY_ALGORITHMS:
        say(f"reading {algorithm} neighbour lists")
        candidates = splits["standard"].items
        lists = read_neighbour_lists(client, versions["similarity"], algorithm, list(candidates))
        if not lists:
            raise DataError(f"no {algorithm} lists under similarity version {versions['similarity']}")
        neighbours = NeighbourMatrix.from_lists(lists, candidates)
        for variant, split in splits.items():
            say(f"scoring item-to-item ({algorithm}, {variant})")
            ranked = item_to_item_ranking(neighbours, split, k, config)
            channel = f"item_to_item:{algorithm}"
            figures[variant][channel] = split.evaluate(ranked)
            short[variant][channel] = int((ranked[:, k - 1] < 0).sum())
    return ChannelEvaluation(as_of=as_of, events_path=events_path, versions=dict(versions),
                             rebuilt=list(rebuilt),
                             users={variant: len(split.users) for variant, split in splits.items()},
                             figures=figures, seconds=time.perf_counter() - started, short_lists=short,
                             reference=reference)


def table_rows(evaluation: ChannelEvaluation, variant: str) -> list[tuple[str, str, list[float | None]]]:
    """(model, source, values in METRICS order) for the measured channels, then the README's rows."""
    rows: list[tuple[str, str, list[float | None]]] = [
        (channel, "measured", [values.get(metric) for metric in METRICS])
        for channel, values in evaluation.figures[variant].items()
    ]
    rows.extend((model, "README", [values.get(metric) for metric in METRICS])
                for model, values in evaluation.reference.get(variant, {}).items())
    return rows


def write_report(evaluation: ChannelEvaluation, folder: Path) -> dict[str, Path]:
    """evaluation.md (the tables), evaluation.png (bar plot per variant), evaluation.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "evaluation.md", "plot": folder / "evaluation.png",
             "json": folder / "evaluation.json"}
    lines = [f"# Recall channels, offline evaluation as of {evaluation.as_of}", "",
             f"Events: `{evaluation.events_path}`. Popularity version `{evaluation.versions['popularity']}`, "
             f"similarity version `{evaluation.versions['similarity']}`. Protocol: the data set README's "
             "(global temporal split, binary gains, means over users).", ""]
    for variant in VARIANTS:
        lines += [f"## {variant} ({evaluation.users[variant]:,} users)", "",
                  "| model | source | " + " | ".join(METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        lines += [f"| {model} | {source} | " + " | ".join(fmt(v) for v in values) + " |"
                  for model, source, values in table_rows(evaluation, variant)]
        lines.append("")
    if evaluation.reference:
        lines += [REFERENCE_NOTE, ""]
    paths["markdown"].write_text("\n".join(lines), encoding="utf-8")
    paths["json"].write_text(json.dumps(evaluation.as_dict(), indent=2, sort_keys=True) + "\n",
                             encoding="utf-8")

    figure, axes = plt.subplots(1, len(VARIANTS), figsize=(14, 5), sharey=False)
    for axis, variant in zip(axes, VARIANTS, strict=True):
        rows = table_rows(evaluation, variant)
        width = 0.8 / len(rows)
        positions = np.arange(len(METRICS))
        for n, (model, source, values) in enumerate(rows):
            heights = [np.nan if v is None else v for v in values]
            axis.bar(positions + n * width - 0.4 + width / 2, heights, width,
                     label=f"{model} ({source})", hatch="//" if source == "README" else None,
                     alpha=0.55 if source == "README" else 1.0)
        axis.set_xticks(positions, METRICS, rotation=30)
        axis.set_title(f"{variant}: {evaluation.users[variant]:,} users, as of {evaluation.as_of}")
        axis.grid(axis="y", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(paths["plot"], dpi=110)
    plt.close(figure)
    return paths


# --- single channels to depth, for `models.evaluate_all` ------------------------------------------

@dataclass(frozen=True)
class ChannelRanking:
    """One channel's top `depth` per evaluated user: candidate indices of the split (-1 padded)
    and the channel's scores."""

    ranked: np.ndarray
    scores: np.ndarray


def popular_channel(settings: Settings, version: str, split: EvaluationSplit, depth: int) -> ChannelRanking:
    stored = most_popular_list(settings, version)
    index = split.item_index(list(stored.item_ids))
    keep = index >= 0
    ranked = np.full(depth, -1, dtype=np.int64)
    scores = np.zeros(depth)
    n = min(depth, int(keep.sum()))
    ranked[:n] = index[keep][:n]
    scores[:n] = np.asarray(stored.scores, dtype=np.float64)[keep][:n]
    users = len(split.users)
    return ChannelRanking(np.tile(ranked, (users, 1)), np.tile(scores, (users, 1)))


def content_channel(settings: Settings, version: str, split: EvaluationSplit, events: pd.DataFrame,
                    depth: int, config: ContentConfig | None = None) -> ChannelRanking:
    """`finegrain.recall.content.recommend` for every evaluated user, with the profile serving would
    hold at the split (`finegrain.features.user` on the lines before it) and the postings of the index
    version in Redis."""
    from finegrain.features.user import ItemLookup, user_profiles

    config = config or ContentConfig()
    history = events.loc[rows_before(events, split.split_date)]
    lookup = ItemLookup.from_attributes(item_attributes_as_of(history))
    users = set(split.users.tolist())
    profiles = {p.user_id: p for p in user_profiles(history[history["user_id"].isin(users)],
                                                    split.split_date, lookup)}
    postings = RedisPostings(redis_client(settings), version)
    postings.prefetch(pair for profile in profiles.values() for pair in wanted_postings(profile, config))
    if not any(value is not None for value in postings.cache.values()):
        raise DataError(f"no content postings under index version {version}: rebuild it (--rebuild)")
    ranked = np.full((len(split.users), depth), -1, dtype=np.int64)
    scores = np.zeros((len(split.users), depth))
    for row, user in enumerate(split.users.tolist()):
        profile = profiles.get(str(user))
        if profile is None:
            continue
        found = recommend_content(profile, postings, depth, config)
        index = split.item_index(found.item_ids)
        keep = index >= 0
        ranked[row, :int(keep.sum())] = index[keep]
        scores[row, :int(keep.sum())] = found.scores[keep]
    return ChannelRanking(ranked, scores)


def embedding_channel(events: pd.DataFrame, split: EvaluationSplit, depth: int
                      ) -> tuple[ChannelRanking, float]:
    """ALS trained on the purchases before the split (`models.embeddings`), searched with each user's
    learnt vector (folded in from the train history for a user the model did not see)."""
    from models.embeddings import train_embeddings

    trained = train_embeddings(events, split.split_date)
    model = trained.model
    vectors, known = model.user_vectors(split.users)
    for row in np.flatnonzero(~known):
        vectors[row] = model.fold_in(split.purchase_history(int(row)), split.today)
    rows, scores = model.search(vectors, depth)
    to_candidate = split.item_index(model.item_ids.astype(str))
    ranked = np.where(rows >= 0, to_candidate[np.maximum(rows, 0)], -1)
    return ChannelRanking(ranked, np.where(rows >= 0, scores, 0.0)), trained.seconds
