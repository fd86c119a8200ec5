import csv
import json
import math

from gpt2bench.measure.row import COLUMNS
from gpt2bench.report.store import CSV_NAME, JSON_NAME, ResultsStore, read_document


def _row(i):
    return {c: i for c in COLUMNS} | {"options": "{}", "tpot_ms_ci95_low": math.nan, "load_export_s": 1.5}


def test_store_writes_complete_files_after_every_row(tmp_path):
    store = ResultsStore(tmp_path / "run", {"cpu_model": "x"}, meta={"run_id": "r"})
    store.add(_row(1), {"per_run": {"ttft_ms": [1.0, 2.0]}})
    with (tmp_path / "run" / CSV_NAME).open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    assert list(rows[0])[: len(COLUMNS)] == COLUMNS and "load_export_s" in rows[0]
    store.add(_row(2), {"per_run": {}})
    doc = read_document(tmp_path / "run")
    assert doc["schema_version"] == 1 and doc["run_id"] == "r" and doc["environment"]["cpu_model"] == "x"
    assert [r["run_id"] for r in doc["rows"]] == [1, 2]
    assert doc["rows"][0]["tpot_ms_ci95_low"] is None  # NaN is written as null: strict JSON
    json.loads((tmp_path / "run" / JSON_NAME).read_text(), parse_constant=lambda c: 1 / 0)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CSV_NAME, JSON_NAME]  # no temp files
