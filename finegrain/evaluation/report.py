"""The full offline evaluation's figures and their report: every recall channel alone, the merged
recall, and each ranker's final list on the data set README's protocol (`finegrain evaluate all`).

Written into one folder: `report.md` (the tables), `channels.png` (Recall@20 and NDCG@20 per channel,
merge and ranker, next to the README's reference rows), `recall_at_k.png` (Recall@K for K from 10
to 1,000 per channel and for the merge) and `report.json` (every figure, for scripts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from finegrain.evaluation.protocol import REFERENCE_NOTE, TEST_DAYS

TABLE_METRICS = ("HR@10", "Recall@10", "NDCG@10", "HR@20", "Recall@20", "NDCG@20")
RANKER_METRICS = (*TABLE_METRICS, "AUC", "GAUC")
CURVE_KS = (10, 20, 50, 100, 200, 300, 500, 700, 1000)
MERGE_KS = (200, 500, 1000)
LABELS = {
    "popular": "MostPop (popular)",
    "content": "content",
    "item_to_item:cosine": "item-to-item cosine",
    "item_to_item:swing": "item-to-item Swing",
    "embedding": "embedding (ALS)",
    "item_to_item": "item-to-item",
}


@dataclass
class MergeFigures:
    quotas: dict[str, int]
    total: int
    item_to_item: str  # which similarity algorithm fed the merge's item_to_item channel
    figures: dict[str, float]  # Recall@K (and HR/NDCG) of the merged candidates in merge order
    channel_recall_at_quota: dict[str, float]  # each channel's own Recall at its quota
    mean_candidates: float
    brought_by: dict[str, float]  # mean merged items per user that each channel brought
    only_by: dict[str, float]  # ... that only that channel brought
    seconds_per_user_ms: float


@dataclass
class FullEvaluation:
    as_of: date
    events_path: Path
    users: int
    versions: dict[str, str]
    rebuilt: list[str]
    channels: dict[str, dict[str, float]]  # channel -> metric -> value
    merge: MergeFigures
    rankers: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    test_days: int = TEST_DAYS
    # The data set README's rows, when the split is its own (`protocol.reference_rows`).
    reference: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "test_days": self.test_days,
            "events": str(self.events_path),
            "users": self.users,
            "versions": self.versions,
            "rebuilt": self.rebuilt,
            "channels": self.channels,
            "merge": self.merge.__dict__,
            "rankers": self.rankers,
            "notes": self.notes,
            "reference": self.reference,
            "seconds": self.seconds,
        }


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def label(channel: str) -> str:
    return LABELS.get(channel, channel)


def summary_rows(evaluation: FullEvaluation) -> list[tuple[str, str, dict[str, float]]]:
    """(name, kind, figures) of every measured list then the README's rows: the one table."""
    rows = [(label(name), "channel", figures) for name, figures in evaluation.channels.items()]
    rows.append((f"merged recall ({evaluation.merge.total:,} candidates, merge order)", "merge",
                 evaluation.merge.figures))
    rows += [(name, "ranker", figures) for name, figures in evaluation.rankers.items()]
    rows += [(f"README {name}", "README", figures) for name, figures in evaluation.reference.items()]
    return rows


def markdown(evaluation: FullEvaluation) -> str:
    merge = evaluation.merge
    lines = [
        f"# Offline evaluation as of {evaluation.as_of}: recall channels, merged recall, rankers", "",
        f"Events: `{evaluation.events_path}`. Protocol: the data set README's (global temporal split at "
        f"{evaluation.as_of}, test = the {evaluation.test_days} days from it, {evaluation.users:,} users who "
        "bought in both, "
        "targets = every item bought in the test window, binary gains, means over users).",
        "Datasets: " + ", ".join(f"{name} `{version}`" for name, version in evaluation.versions.items())
        + (f" (built for this run: {', '.join(evaluation.rebuilt)})" if evaluation.rebuilt else "") + ".",
        "", "## Final lists and channels alone", "",
        "| model | kind | " + " | ".join(RANKER_METRICS) + " |",
        "|---|---|" + "---|" * len(RANKER_METRICS),
    ]
    lines += [f"| {name} | {kind} | " + " | ".join(fmt(figures.get(m)) for m in RANKER_METRICS) + " |"
              for name, kind, figures in summary_rows(evaluation)]
    lines += ["", "AUC / GAUC: over all the ranker's candidate rows / per user, weighted by candidates.",
              "The merged recall's HR/Recall/NDCG@10/@20 read its candidates in merge order (round-robin "
              "across channels), which is not a ranking: the ranker's row is the final list.", ""]
    lines += ["## How much of the target the candidates hold (Recall@K)", "",
              "| list | " + " | ".join(f"@{k}" for k in CURVE_KS) + " |",
              "|---|" + "---|" * len(CURVE_KS)]
    curves = {label(n): f for n, f in evaluation.channels.items()}
    curves["merged recall"] = merge.figures
    lines += [f"| {name} | " + " | ".join(fmt(figures.get(f"Recall@{k}")) for k in CURVE_KS) + " |"
              for name, figures in curves.items()]
    quotas = ", ".join(f"{name} {quota}" for name, quota in merge.quotas.items())
    lines += ["", "## Merged recall", "",
              f"`finegrain.recall.merge` per user with quotas {quotas} (item_to_item = "
              f"{merge.item_to_item}), {merge.total:,} candidates at most, every channel read to depth "
              f"{merge.total:,}; nothing excluded (the protocol keeps repeat purchases). The first K "
              "candidates in merge order are exactly what a merge with total K returns, so the curve "
              "above is the merge at every size.", "",
              "| merged Recall@200 | Recall@500 | Recall@1000 | mean candidates | merge() ms per user |",
              "|---|---|---|---|---|",
              f"| {' | '.join(fmt(merge.figures.get(f'Recall@{k}')) for k in MERGE_KS)} | "
              f"{merge.mean_candidates:,.0f} | {merge.seconds_per_user_ms:.2f} |", "",
              "| channel | quota | its own Recall at its quota | merged items it brought | only it brought |",
              "|---|---|---|---|---|"]
    lines += [f"| {label(name)} | {merge.quotas.get(name, 0)} | "
              f"{fmt(merge.channel_recall_at_quota.get(name))} | {merge.brought_by.get(name, 0.0):.0f} | "
              f"{merge.only_by.get(name, 0.0):.0f} |" for name in merge.brought_by]
    if evaluation.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in evaluation.notes]
    if evaluation.reference:
        lines += ["", REFERENCE_NOTE]
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in evaluation.seconds.items()),
              "", "![per channel](channels.png)", "", "![recall at K](recall_at_k.png)", ""]
    return "\n".join(lines)


def plot_channels(evaluation: FullEvaluation, path: Path) -> None:
    """Grouped bars: Recall@20 and NDCG@20 of every list, README rows hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary_rows(evaluation)
    metrics = ("Recall@20", "NDCG@20")
    figure, axis = plt.subplots(figsize=(max(8.0, 0.9 * len(rows) + 3), 5))
    positions = np.arange(len(rows))
    width = 0.8 / len(metrics)
    colours = {"channel": ("tab:blue", "tab:cyan"), "merge": ("tab:purple", "plum"),
               "ranker": ("tab:red", "salmon"), "README": ("tab:gray", "lightgray")}
    for n, metric in enumerate(metrics):
        heights = [figures.get(metric, np.nan) for _, _, figures in rows]
        axis.bar(positions + (n - 0.5) * width, heights, width,
                 color=[colours[kind][n] for _, kind, _ in rows],
                 hatch=[("//" if kind == "README" else "") for _, kind, _ in rows], edgecolor="black",
                 linewidth=0.4)
    axis.set_xticks(positions, [name.replace(" (", "\n(") for name, _, _ in rows], rotation=35, ha="right",
                    fontsize=7)
    from matplotlib.patches import Patch

    kinds = dict.fromkeys(kind for _, kind, _ in rows)
    axis.legend(handles=[Patch(facecolor=colours[kind][n], hatch="//" if kind == "README" else "",
                               edgecolor="black", label=f"{kind}: {metric}")
                         for kind in kinds for n, metric in enumerate(metrics)], fontsize=7, ncol=len(kinds))
    axis.set_ylabel("Recall@20 (left bar), NDCG@20 (right bar)")
    axis.set_title(f"Per list, README protocol as of {evaluation.as_of} ({evaluation.users:,} users)")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_recall_at_k(evaluation: FullEvaluation, path: Path) -> None:
    """Recall@K against K (log scale) for every channel alone and for the merge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    curves = {label(n): f for n, f in evaluation.channels.items()}
    curves["merged recall"] = evaluation.merge.figures
    for name, figures in curves.items():
        ks = [k for k in CURVE_KS if f"Recall@{k}" in figures]
        axis.plot(ks, [figures[f"Recall@{k}"] for k in ks], marker="o", markersize=3, label=name,
                  linewidth=2.5 if name == "merged recall" else 1.2)
    axis.set_xscale("log")
    axis.set_xticks(list(CURVE_KS), [str(k) for k in CURVE_KS])
    axis.set_xlabel("K (candidates per user)")
    axis.set_ylabel("Recall@K")
    axis.set_title(f"How much of the target the top K hold, as of {evaluation.as_of}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(evaluation: FullEvaluation, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "report.md", "channels_plot": folder / "channels.png",
             "recall_plot": folder / "recall_at_k.png", "json": folder / "report.json"}
    paths["markdown"].write_text(markdown(evaluation), encoding="utf-8")
    paths["json"].write_text(json.dumps(evaluation.as_dict(), indent=2, sort_keys=True, default=str) + "\n",
                             encoding="utf-8")
    plot_channels(evaluation, paths["channels_plot"])
    plot_recall_at_k(evaluation, paths["recall_plot"])
    return paths
