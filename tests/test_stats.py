"""`securitynet catalog stats`: the catalog's counts equal the database's, computed independently."""

from __future__ import annotations

import pandas as pd
import pytest

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.catalog.stats import PANELS, dataset_table_counts, format_tables, panel_counts, plot, records

from conftest import SHARED, needs_shared

DATABASE = SHARED / "reference" / "securitynet-models.csv"
RECORDS = records(load_catalog([BUILTIN_CATALOG]))


@pytest.fixture(scope="module")
def database() -> pd.DataFrame:
    return pd.read_csv(DATABASE)


@needs_shared(DATABASE)
def test_models_per_dataset_and_table_equal_the_database(database):
    expected = {(t, d): int(n) for (t, d), n in database.groupby(["table", "data_name"]).size().items()}
    assert dataset_table_counts(RECORDS) == expected
    assert len(RECORDS) == len(database) == 529


@needs_shared(DATABASE)
@pytest.mark.parametrize("panel", PANELS, ids=[p.name for p in PANELS])
def test_every_figure_1_panel_equals_the_database(database, panel):
    column = {"year": "year", "model_type": "model_type", "country": "country", "venue": "conference",
              "dataset": "data_name"}[panel.key]
    got = panel_counts(RECORDS, panel)
    values = database[column].astype(str)
    if panel.key == "country":  # one value per set of countries, whatever their order in the database
        values = values.map(lambda v: ", ".join(sorted((p.strip() for p in v.split(",")), key=str.casefold)))
    for table in panel.tables:
        expected = values[database.table == table].value_counts().to_dict()
        assert dict(got[table]) == expected, table


def test_tables_print_the_totals():
    text = format_tables(RECORDS)
    assert "529 models" in text
    assert [line.split() for line in text.splitlines() if line.startswith("total")] == [["total", "437", "92", "529"]]
    assert "Top venues by model table (venues)" in text


def test_plots_are_pngs_one_per_panel(tmp_path):
    written = plot(RECORDS, tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{p.name}.png" for p in PANELS)
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
