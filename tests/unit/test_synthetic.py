"""The synthetic generator on a small generated data set: size scales by k, shape stays, seed decides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from finegrain.data.retail import EVENTS_SCHEMA, build_catalog, read_catalog, read_events, read_report
from finegrain.data.synthetic import SyntheticReport, generate_synthetic, shape_summary
from finegrain.errors import DataError

FIRST_DAY = np.datetime64("2009-12-01")
LAST_DAY = np.datetime64("2010-12-09")


def make_events(seed: int = 0, users: int = 600, items: int = 400, baskets: int = 2500) -> pd.DataFrame:
    """A wholesaler-like year: skewed users and items, favourite items bought again, an autumn peak,
    no Saturday trading. Small, but with the structure the generator must keep."""
    rng = np.random.default_rng(seed)
    days = np.arange(FIRST_DAY, LAST_DAY + 1)
    # A smooth rise to a peak in late November (as in the real data), and no trade on Saturdays.
    from_peak = (days - np.datetime64("2010-11-25")).astype(int)
    weight = (1 + 2 * np.exp(-((from_peak / 45) ** 2))) * (((days.astype(int) + 3) % 7) != 5)
    item_popularity = 1 / np.arange(1, items + 1) ** 0.9
    user_activity = 1 / np.arange(1, users + 1) ** 0.7
    favourites = np.stack(
        [rng.choice(items, 6, replace=False, p=item_popularity / item_popularity.sum()) for _ in range(users)]
    )

    basket_user = rng.choice(users, baskets, p=user_activity / user_activity.sum())
    basket_day = rng.choice(days, baskets, p=weight / weight.sum())
    basket_time = basket_day.astype("datetime64[ms]") + rng.integers(8 * 60, 18 * 60, baskets) * 60_000
    sizes = rng.integers(3, 30, baskets)
    basket = np.repeat(np.arange(baskets), sizes)
    lines = len(basket)
    user = basket_user[basket]
    favourite = favourites[user, rng.integers(0, favourites.shape[1], lines)]
    other = rng.choice(items, lines, p=item_popularity / item_popularity.sum())
    item = np.where(rng.random(lines) < 0.5, favourite, other)
    invoice = np.char.mod("%d", 500_000 + basket)
    return pd.DataFrame(
        {
            "event_id": np.char.add(np.char.add(invoice, "-"), np.char.mod("%d", np.arange(1, lines + 1))),
            "user_id": np.char.mod("%d", 12_000 + user).astype(object),
            "item_id": np.char.mod("%05d", 20_000 + item).astype(object),
            "event_type": "purchase",
            "quantity": rng.integers(1, 25, lines).astype(np.int32),
            "price": np.round(0.5 + item % 17, 2),
            "timestamp": pd.to_datetime(basket_time[basket]).tz_localize("UTC"),
            "invoice": invoice.astype(object),
            "country": "United Kingdom",
            "description": np.char.mod("ITEM %d", item).astype(object),
        }
    )


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return make_events()


@pytest.fixture(scope="module")
def catalog(events: pd.DataFrame) -> pd.DataFrame:
    return build_catalog(pa.Table.from_pandas(events, schema=EVENTS_SCHEMA, preserve_index=False)).to_pandas()


@pytest.fixture(scope="module")
def x3(
    events: pd.DataFrame, catalog: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SyntheticReport, pd.DataFrame]:
    """One x3 data set, shared by the tests that only read it."""
    return generate(events, catalog, tmp_path_factory.mktemp("x3"), scale=3)


def generate(
    events: pd.DataFrame, catalog: pd.DataFrame, out: Path, scale: int = 3, seed: int = 7
) -> tuple[SyntheticReport, pd.DataFrame]:
    report = generate_synthetic(events, catalog, scale, seed, out)
    return report, read_events(out)


def test_shape_summary_on_a_hand_made_example() -> None:
    def at(day: str) -> pd.Timestamp:
        return pd.Timestamp(day, tz="UTC")

    # Last event 2010-12-09, so the window starts 2010-11-10 00:00.
    rows = [
        ("a", "x", "1", at("2010-10-01")),
        ("a", "y", "1", at("2010-10-01")),
        ("a", "x", "2", at("2010-11-10")),  # bought before
        ("a", "z", "2", at("2010-11-10")),  # new
        ("b", "x", "3", at("2010-11-09 23:59")),
        ("b", "x", "4", at("2010-12-09")),  # bought before
        ("c", "y", "5", at("2010-12-01")),  # no history: not evaluated
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "invoice", "timestamp"])
    shape = shape_summary(frame)

    assert shape["repeat_users"] == 2
    assert shape["repeat_rate"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert shape["users"] == 3
    assert shape["items"] == 3
    assert shape["baskets"] == 5
    assert shape["mean_basket_size"] == pytest.approx(7 / 5)
    assert shape["month_share"] == pytest.approx({"2010-10": 2 / 7, "2010-11": 3 / 7, "2010-12": 2 / 7})


def test_scale_multiplies_the_size_and_keeps_the_shape(
    events: pd.DataFrame, x3: tuple[SyntheticReport, pd.DataFrame]
) -> None:
    report, synthetic = x3
    real, fake = shape_summary(events), shape_summary(synthetic)

    assert fake["lines"] == 3 * real["lines"] == len(synthetic) == report.clean_rows
    assert fake["users"] == 3 * real["users"]
    assert fake["baskets"] == 3 * real["baskets"]
    # An item copy disappears only if every one of its pairs was swapped away.
    assert 0.97 * 3 * real["items"] <= fake["items"] <= 3 * real["items"]
    assert fake["mean_basket_size"] == pytest.approx(real["mean_basket_size"], rel=1e-9)
    assert real["repeat_rate"] > 0.3  # the example has repeats to lose
    assert fake["repeat_rate"] == pytest.approx(real["repeat_rate"], abs=0.02)
    assert fake["month_share"].keys() == real["month_share"].keys()
    for month, share in real["month_share"].items():
        assert fake["month_share"][month] == pytest.approx(share, abs=0.01), month
    assert report.shape == fake


def test_whole_week_shifts_keep_weekdays_hours_and_the_time_range(
    events: pd.DataFrame, x3: tuple[SyntheticReport, pd.DataFrame]
) -> None:
    _, synthetic = x3

    for field in ("dayofweek", "hour"):
        real_counts = getattr(events["timestamp"].dt, field).value_counts()
        assert (getattr(synthetic["timestamp"].dt, field).value_counts() == 3 * real_counts).all()
    assert synthetic["timestamp"].min() == events["timestamp"].min()
    assert synthetic["timestamp"].max() == events["timestamp"].max()
    moved = synthetic["timestamp"].to_numpy()[len(events) :] != np.tile(events["timestamp"].to_numpy(), 2)
    assert 0.3 < moved.mean() < 0.9  # the copies are not just relabelled


def test_copies_have_their_own_ids_and_are_linked_by_swapped_items(
    events: pd.DataFrame, x3: tuple[SyntheticReport, pd.DataFrame]
) -> None:
    report, synthetic = x3
    n = len(events)
    first, second = synthetic.iloc[:n], synthetic.iloc[n : 2 * n].reset_index(drop=True)

    pd.testing.assert_frame_equal(first.reset_index(drop=True), events, check_dtype=False)
    assert (second["user_id"] == events["user_id"] + "~1").all()
    assert (second["invoice"] == events["invoice"] + "~1").all()
    assert synthetic["event_id"].is_unique
    own_item = second["item_id"] == events["item_id"] + "~1"
    assert 0.05 < 1 - own_item.mean() < 0.15
    assert report.swapped_lines == pytest.approx(0.1 * 2 * n, rel=0.3)
    swapped_to = second.loc[~own_item, "item_id"]
    assert swapped_to.str.endswith("~2").any() and (~swapped_to.str.contains("~")).any()
    # A swap replaces the item on every line of that (user, item) pair, so repeats stay repeats.
    per_pair = second.assign(orig=events["item_id"].to_numpy()).groupby(["user_id", "orig"])["item_id"]
    assert (per_pair.nunique() == 1).all()


def test_an_item_copy_keeps_the_description_of_its_original(
    events: pd.DataFrame, catalog: pd.DataFrame, tmp_path: Path
) -> None:
    generate(events, catalog, tmp_path / "x2", scale=2)
    synthetic_catalog = read_catalog(tmp_path / "x2").set_index("item_id")

    copies = synthetic_catalog[synthetic_catalog.index.str.endswith("~1")]
    originals = synthetic_catalog.loc[copies.index.str.removesuffix("~1")]
    assert (copies["description"].to_numpy() == originals["description"].to_numpy()).all()
    assert synthetic_catalog["lines"].sum() == 2 * len(events)
    assert read_report(tmp_path / "x2")["dataset"] == "synthetic"


def test_the_same_seed_gives_the_same_data_and_another_seed_does_not(
    events: pd.DataFrame, catalog: pd.DataFrame, tmp_path: Path
) -> None:
    _, once = generate(events, catalog, tmp_path / "a", scale=2, seed=11)
    _, again = generate(events, catalog, tmp_path / "b", scale=2, seed=11)
    _, other = generate(events, catalog, tmp_path / "c", scale=2, seed=12)

    pd.testing.assert_frame_equal(once, again)
    assert not once["item_id"].equals(other["item_id"])
    assert not once["timestamp"].equals(other["timestamp"])


def test_scale_one_gives_back_the_input(events: pd.DataFrame, catalog: pd.DataFrame, tmp_path: Path) -> None:
    report, synthetic = generate(events, catalog, tmp_path / "x1", scale=1)

    pd.testing.assert_frame_equal(synthetic, events, check_dtype=False)
    assert report.swapped_lines == 0


def test_bad_arguments_are_refused(events: pd.DataFrame, catalog: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale must be at least 1"):
        generate_synthetic(events, catalog, 0, 1, tmp_path)
    with pytest.raises(DataError, match=r"lack column.* timestamp"):
        generate_synthetic(events.drop(columns="timestamp"), catalog, 2, 1, tmp_path)
    with pytest.raises(DataError, match="catalogue lacks 1 item"):
        generate_synthetic(events, catalog.iloc[1:], 2, 1, tmp_path)
