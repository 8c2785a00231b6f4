"""The real Online Retail II file: the README's figures exactly, hand-checked catalogue entries, and a
synthetic x2 of it that keeps the shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from finegrain.data.retail import REJECT_REASONS, read_catalog, read_events, read_report
from finegrain.data.synthetic import shape_summary

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(retail_data: Path) -> dict[str, Any]:
    return read_report(retail_data)


@pytest.fixture(scope="module")
def synthetic_x2(retail_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("synthetic-x2")
    args = ["data", "synth", "--scale", "2", "--seed", "3", "--source", str(retail_data), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def test_the_clean_purchase_view_has_the_readme_figures(report: dict[str, Any]) -> None:
    assert report["rows_read"] == 525_461
    assert report["clean_rows"] == 406_295
    assert report["users"] == 4_285
    assert report["items"] == 4_006
    assert report["baskets"] == 18_966
    assert report["user_item_pairs"] == 273_840
    assert report["first_timestamp"] == "2009-12-01T07:45:00+00:00"
    assert report["last_timestamp"] == "2010-12-09T20:01:00+00:00"


def test_rejected_rows_add_up_and_fall_under_their_first_failing_rule(report: dict[str, Any]) -> None:
    rejected = report["rejected"]
    assert list(rejected) == list(REJECT_REASONS)
    assert report["clean_rows"] + sum(rejected.values()) == 525_461
    # 107,927 guest rows as in the README; of its 10,206 cancellations, 367 are guests' and counted there.
    assert rejected == {
        "unparseable": 0,
        "missing_customer": 107_927,
        "cancellation": 9_839,
        "non_positive_quantity": 0,
        "non_positive_price": 31,
        "non_product_code": 1_369,
    }


def test_events_start_with_the_first_line_of_the_file(retail_data: Path) -> None:
    events = read_events(retail_data)
    first = events.iloc[0]
    assert first["event_id"] == "489434-1"
    assert (first["user_id"], first["item_id"], first["quantity"]) == ("13085", "85048", 12)
    assert first["timestamp"] == pd.Timestamp("2009-12-01 07:45:00", tz="UTC")
    assert events["event_id"].is_unique


def test_hand_checked_catalogue_entries(retail_data: Path) -> None:
    catalog = read_catalog(retail_data).set_index("item_id")
    assert len(catalog) == 4_006
    assert catalog["lines"].sum() == 406_295

    heart = catalog.loc["85123A"]
    assert heart["description"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert heart["price"] == pytest.approx(2.95)
    assert heart["lines"] == 3_153
    assert heart["first_seen"] == pd.Timestamp("2009-12-01 09:46:00", tz="UTC")
    assert heart["last_seen"] == pd.Timestamp("2010-12-09 18:09:00", tz="UTC")
    # 347 lines say "RED SPOTTY BOWL", 88 "RED RETROSPOT BOWL".
    bowl = catalog.loc["20676"]
    assert (bowl["description"], bowl["lines"], bowl["price"]) == (
        "RED SPOTTY BOWL",
        435,
        pytest.approx(1.25),
    )
    # Two lines each for "...GARDEN 0" and "...GARDEN, 0": the tie goes to the alphabetically first.
    assert catalog.loc["22868", "description"] == "NUMBER TILE COTTAGE GARDEN 0"
    # Written "79323W" and " WHITE CHERRY LIGHTS" in the file.
    assert catalog.loc["79323W", "description"] == "WHITE CHERRY LIGHTS"


def test_the_repeat_rate_is_the_readmes(retail_data: Path) -> None:
    shape = shape_summary(read_events(retail_data))
    # README: "about 45%", over the 1,291 users of the reference protocol.
    assert shape["repeat_users"] == 1_291
    assert shape["repeat_rate"] == pytest.approx(0.449, abs=0.001)
    assert shape["month_share"]["2010-11"] == pytest.approx(0.148, abs=0.001)


def test_synthetic_x2_keeps_the_shape(synthetic_x2: dict[str, Any]) -> None:
    real, fake = synthetic_x2["source_shape"], synthetic_x2["shape"]
    assert synthetic_x2["clean_rows"] == 2 * 406_295
    assert fake["users"] == 2 * 4_285
    assert fake["baskets"] == 2 * 18_966
    assert 0.98 * 2 * 4_006 <= fake["items"] <= 2 * 4_006
    assert fake["mean_basket_size"] == pytest.approx(real["mean_basket_size"], rel=1e-9)
    assert fake["repeat_rate"] == pytest.approx(real["repeat_rate"], abs=0.02)
    assert fake["month_share"].keys() == real["month_share"].keys()
    for month, share in real["month_share"].items():
        assert fake["month_share"][month] == pytest.approx(share, abs=0.01), month
    assert synthetic_x2["first_timestamp"] == "2009-12-01T07:45:00+00:00"
    assert synthetic_x2["last_timestamp"] == "2010-12-09T20:01:00+00:00"


def test_synthetic_x2_files_are_in_the_canonical_layout(synthetic_x2: dict[str, Any]) -> None:
    events = read_events(Path(synthetic_x2["events_path"]))
    catalog = read_catalog(Path(synthetic_x2["catalog_path"])).set_index("item_id")
    assert len(events) == 2 * 406_295
    assert events["event_id"].is_unique
    assert set(events["item_id"]) == set(catalog.index)
    assert catalog.loc["85123A~1", "description"] == "WHITE HANGING HEART T-LIGHT HOLDER"
