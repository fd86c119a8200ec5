"""The results schema and writers: results.csv (one flat row per configuration) and results.json
(rows, raw per-repetition samples, environment metadata). Both are rewritten atomically after every
finished row, so an interruption never loses finished rows or leaves half a file."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from gpt2bench.core.errors import BenchError
from gpt2bench.core.fsutil import atomic_write_text
from gpt2bench.measure.row import COLUMNS, SCHEMA_VERSION, config_key

CSV_NAME = "results.csv"
JSON_NAME = "results.json"


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null, so other tools can read the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class ResultsStore:
    """A results folder: add() a finished row and both files are on disk, complete, at once. The
    columns and the row's identity are measure/row.py's; this is where rows are kept."""

    def __init__(self, folder: Path, environment: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.environment = environment
        self.meta = meta or {}
        self.rows: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []

    @classmethod
    def load(cls, folder: Path) -> ResultsStore | None:
        """An existing results folder, to append to (--resume); None when there is none yet."""
        path = folder / JSON_NAME
        if not path.is_file():
            return None
        doc = read_document(folder)
        meta = {k: v for k, v in doc.items() if k not in ("schema_version", "environment", "rows", "samples")}
        store = cls(folder, doc.get("environment", {}), meta)
        store.rows, store.samples = list(doc["rows"]), list(doc.get("samples", [{}] * len(doc["rows"])))
        return store

    def add(self, row: dict[str, Any], samples: dict[str, Any]) -> None:
        """Append a finished row; a configuration measured again replaces its earlier row."""
        key = config_key(row)
        keep = [i for i, r in enumerate(self.rows) if config_key(r) != key]
        self.rows = [self.rows[i] for i in keep]
        self.samples = [self.samples[i] for i in keep]
        self.rows.append(row)
        self.samples.append(samples)
        self._write()

    def set_meta(self, key: str, value: Any) -> None:
        """A fact about the whole run (a cluster's nodes), written beside the rows at once."""
        self.meta[key] = value
        self._write()

    def columns(self) -> list[str]:
        extra = [k for row in self.rows for k in row if k not in COLUMNS]
        return COLUMNS + list(dict.fromkeys(extra))

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), extrasaction="raise", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        document = {
            "schema_version": SCHEMA_VERSION,
            **self.meta,
            "environment": self.environment,
            "rows": self.rows,
            "samples": self.samples,
        }
        # JSON first: it holds everything; the CSV is a view of it.
        atomic_write_text(self.folder / JSON_NAME, json.dumps(_clean(document), indent=1))
        atomic_write_text(self.folder / CSV_NAME, buf.getvalue())


def read_document(folder: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A results.json, checked: one clear error for a missing, foreign or incomplete folder."""
    path = folder / JSON_NAME
    if not folder.is_dir():
        raise BenchError(f"results folder '{folder}' does not exist")
    if not path.is_file():
        raise BenchError(f"'{folder}' holds no {JSON_NAME} (is it a gpt2bench results folder?)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"'{path}' is not readable JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        found = doc.get("schema_version") if isinstance(doc, dict) else None
        raise BenchError(f"'{path}' has schema version {found!r}; this gpt2bench reads version {SCHEMA_VERSION}")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows:
        raise BenchError(f"'{path}' holds no result rows")
    ok = [row for row in rows if isinstance(row, dict) and row.get("status") == "ok" and not row.get("scenario")]
    for column in required:  # failed rows have no timings; with no ok row the caller says so
        if ok and not any(column in row for row in ok):
            raise BenchError(f"'{path}' lacks the column '{column}'")
    return doc
