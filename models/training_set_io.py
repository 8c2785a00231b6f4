"""Ranker training sets on disk: Parquet rows plus a `_manifest.json`.

Layout: `path` is either one Parquet file (`*.parquet`, manifest `<stem>_manifest.json` beside it, so two
sets can share a folder) or a directory of part files as Spark writes them (manifest
`<dir>/_manifest.json`; Parquet readers skip names starting with `_` or `.`, so `_SUCCESS`, `.crc`
files and the manifest are never read as rows).

Columns, one row per candidate:
- `cutoff` (ISO date), `user_id`, `item_id` (strings), `label` (int8), `n_targets` (int64, the group's
  value repeated on each of its rows);
- `group` (int64: the group's index in the set) and `position` (int32: the row's index inside its
  group), so the rows can be put back in order whatever order the part files come in;
- one float32 column per `RANKING_FEATURE_NAMES` feature, named after it (NaN kept: it means unknown).

Reading refuses a set whose feature columns are not exactly `RANKING_FEATURE_NAMES` (a model trained
on it would read its columns in the wrong places) and one whose positions have holes or repeats (a
lost or duplicated part file).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from finegrain.features.ranking import RANKING_FEATURE_NAMES
from finegrain.training.training_set import TrainingSet

MANIFEST_NAME = "_manifest.json"
META_COLUMNS: tuple[str, ...] = ("cutoff", "user_id", "item_id", "label", "n_targets", "group", "position")
PART_NAME = "part-00000.parquet"

_clash = set(META_COLUMNS) & set(RANKING_FEATURE_NAMES)
if _clash:  # a feature named like a bookkeeping column would be silently overwritten
    raise RuntimeError(f"ranking feature names clash with training-set columns: {sorted(_clash)}")


def arrow_schema() -> pa.Schema:
    """The column types every writer (this module, the Spark job) must produce."""
    return pa.schema([("cutoff", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
                      ("label", pa.int8()), ("n_targets", pa.int64()), ("group", pa.int64()),
                      ("position", pa.int32())]
                     + [(name, pa.float32()) for name in RANKING_FEATURE_NAMES])


def is_single_file(path: Path) -> bool:
    return path.suffix == ".parquet" and not path.is_dir()


def manifest_path(path: Path) -> Path:
    return path.parent / f"{path.stem}{MANIFEST_NAME}" if is_single_file(path) else path / MANIFEST_NAME


def to_table(rows: TrainingSet, first_group: int = 0) -> pa.Table:
    """The rows as an Arrow table; `first_group` offsets the group index (a part of a larger set)."""
    if tuple(rows.feature_names) != RANKING_FEATURE_NAMES:
        raise ValueError("the training set's feature names are not RANKING_FEATURE_NAMES: "
                         + describe_mismatch(list(rows.feature_names)))
    sizes = np.asarray(rows.group_sizes, dtype=np.int64)
    if (sizes <= 0).any():
        raise ValueError("a group without rows cannot be stored (its user would vanish on reading)")
    n = int(sizes.sum())
    if len(rows.labels) != n or rows.features.shape != (n, len(RANKING_FEATURE_NAMES)):
        raise ValueError(f"group sizes add up to {n:,} rows but the set holds {len(rows.labels):,} labels "
                         f"and a {rows.features.shape} feature array")
    group = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    position = (np.arange(n, dtype=np.int64) - np.repeat(starts, sizes)).astype(np.int32)
    features = np.asarray(rows.features, dtype=np.float32)
    columns: dict[str, Any] = {
        "cutoff": np.repeat(np.asarray(rows.group_cutoffs, dtype=object), sizes).astype(str),
        "user_id": np.repeat(np.asarray(rows.group_users, dtype=object), sizes).astype(str),
        "item_id": np.asarray(rows.item_ids, dtype=object).astype(str),
        "label": np.asarray(rows.labels, dtype=np.int8),
        "n_targets": np.repeat(np.asarray(rows.n_targets, dtype=np.int64), sizes),
        "group": group + first_group,
        "position": position,
    }
    for i, name in enumerate(RANKING_FEATURE_NAMES):
        columns[name] = features[:, i]
    schema = arrow_schema()
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in schema], schema=schema)


def summary(rows: TrainingSet) -> dict[str, Any]:
    """What the manifest always says about the rows (the caller adds as-of, build seconds, ...)."""
    return {"feature_names": list(RANKING_FEATURE_NAMES), "rows": len(rows.labels),
            "groups": len(rows.group_sizes), "positives": int(np.asarray(rows.labels).sum()),
            "cutoffs": sorted({str(c) for c in rows.group_cutoffs.tolist()}),
            "candidate_recall": round(rows.candidate_recall(), 6) if len(rows.group_sizes) else None,
            "as_of": None, "build_seconds": round(sum(rows.seconds.values()), 2),
            "seconds": dict(rows.seconds)}


def write_manifest(path: Path, rows: TrainingSet, manifest: dict[str, Any] | None = None) -> Path:
    """The manifest of the set at `path` (the caller's keys win over the computed ones)."""
    body = {**summary(rows), **(manifest or {})}
    target = manifest_path(path)
    target.write_text(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")
    return target


def write_training_set(rows: TrainingSet, path: Path, *, manifest: dict[str, Any] | None = None) -> None:
    """Write the rows (and the manifest) atomically: readers see the old set or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = to_table(rows)
    # The temporary name starts with "." so a reader of the parent folder never picks it up.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if is_single_file(path):
            pq.write_table(table, staging / path.name)
            write_manifest(staging / path.name, rows, manifest)
            os.replace(staging / path.name, path)
            os.replace(manifest_path(staging / path.name), manifest_path(path))
        else:
            pq.write_table(table, staging / PART_NAME)
            write_manifest(staging, rows, manifest)
            replace_directory(staging, path)
            staging = Path()
    finally:
        if staging != Path() and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def replace_directory(staging: Path, path: Path) -> None:
    """Move a finished directory into place (an older one under that name is removed after)."""
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, path)


def describe_mismatch(found: list[str]) -> str:
    missing = [name for name in RANKING_FEATURE_NAMES if name not in found]
    extra = [name for name in found if name not in RANKING_FEATURE_NAMES]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not parts:
        parts.append(f"same names in another order: {found}")
    return "; ".join(parts)


def read_manifest(path: Path) -> dict[str, Any]:
    target = manifest_path(Path(path))
    if not target.exists():
        return {}
    loaded: dict[str, Any] = json.loads(target.read_text())
    return loaded


def read_training_set(path: Path) -> TrainingSet:
    """The rows at `path` (a file or a directory of part files), groups contiguous and in order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no training set at {path}")
    table = pq.read_table(path)
    names = table.column_names
    absent = [name for name in META_COLUMNS if name not in names]
    if absent:
        raise ValueError(f"{path} is not a training set: columns {absent} are missing")
    found = [name for name in names if name not in META_COLUMNS]
    if set(found) != set(RANKING_FEATURE_NAMES) or len(found) != len(RANKING_FEATURE_NAMES):
        raise ValueError(f"the feature columns of {path} do not match RANKING_FEATURE_NAMES: "
                         + describe_mismatch(found))
    listed = read_manifest(path).get("feature_names")
    if listed is not None and tuple(listed) != RANKING_FEATURE_NAMES:
        raise ValueError(f"the manifest of {path} lists other features than RANKING_FEATURE_NAMES: "
                         + describe_mismatch(list(listed)))
    group = table.column("group").to_numpy().astype(np.int64)
    position = table.column("position").to_numpy().astype(np.int64)
    order = np.lexsort((position, group))
    group, position = group[order], position[order]
    n = len(order)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = group[1:] != group[:-1]
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(starts, n)).astype(np.int64)
    expected = np.arange(n, dtype=np.int64) - np.repeat(starts, sizes)
    if not np.array_equal(position, expected):
        bad = int(group[np.flatnonzero(position != expected)[0]])
        raise ValueError(f"{path}: the rows of group {bad} have missing or repeated positions "
                         "(a part file lost or written twice?)")

    def column(name: str) -> np.ndarray:
        values: np.ndarray = table.column(name).to_numpy(zero_copy_only=False)
        return values[order]

    features = np.empty((n, len(RANKING_FEATURE_NAMES)), dtype=np.float32)
    for i, name in enumerate(RANKING_FEATURE_NAMES):
        features[:, i] = column(name)
    return TrainingSet(
        features=features,
        labels=column("label").astype(np.int8),
        item_ids=column("item_id").astype(object),
        group_users=column("user_id")[starts].astype(object),
        group_cutoffs=column("cutoff")[starts].astype(object),
        group_sizes=sizes,
        n_targets=column("n_targets")[starts].astype(np.int64),
        seconds={str(k): float(v) for k, v in read_manifest(path).get("seconds", {}).items()},
    )
