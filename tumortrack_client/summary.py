"""The summary table of a batch: per case its job, final state, lesion count, volumes and error.

For a segmentation the lesion count and volumes come from ``lesions.json``;
for a tracking from the last follow-up in ``correspondence.json``, with its
RECIST 1.1 response. A lesion counts when its volume is above zero.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tumortrack_client.batch_state import CaseRecord
from tumortrack_client.layout import SUMMARY_FILE_NAME
from tumortrack_client.manifest import Case

COLUMNS = ("case_id", "kind", "job_id", "state", "lesion_count", "volumes_ml", "response", "error")
UNFINISHED = "unfinished"


def summarize_artifacts(folder: Path, kind: str) -> dict[str, Any]:
    """Read a succeeded case's downloaded tables and return its lesion count, volumes (id to ml) and response."""
    if kind == "track":
        document = json.loads((folder / "correspondence.json").read_text())
        last = document["followups"][-1]
        volumes = {str(row["lesion_id"]): row["volume_ml"] for row in last["lesions"] if row.get("volume_ml")}
        return {"lesion_count": len(volumes), "volumes_ml": volumes, "response": (last.get("recist") or {}).get("response")}

    table = json.loads((folder / "lesions.json").read_text())
    volumes = {str(row["id"]): row["volume_ml"] for row in table["lesions"] if row.get("volume_ml")}
    return {"lesion_count": len(volumes), "volumes_ml": volumes, "response": None}


def summary_rows(cases: Sequence[Case], records: Sequence[CaseRecord]) -> list[dict[str, str]]:
    rows = []
    for case, record in zip(cases, records):
        volumes = record.summary.get("volumes_ml") or {}
        rows.append({
            "case_id": case.case_id,
            "kind": case.kind,
            "job_id": record.job_id or "",
            "state": record.state if record.status == "done" else UNFINISHED,
            "lesion_count": "" if record.summary.get("lesion_count") is None else str(record.summary["lesion_count"]),
            "volumes_ml": " ".join(f"{lesion}:{volume:.2f}" for lesion, volume in volumes.items()),
            "response": record.summary.get("response") or "",
            "error": record.error or "",
        })
    return rows


def write_summary(out_dir: Path, rows: Sequence[dict[str, str]]) -> Path:
    """Write OUT/summary.csv atomically and return its path."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)

    path = out_dir / SUMMARY_FILE_NAME
    descriptor, temporary = tempfile.mkstemp(prefix=f".{SUMMARY_FILE_NAME}.", dir=out_dir)
    with os.fdopen(descriptor, "w", newline="", encoding="utf-8") as handle:
        handle.write(text.getvalue())
    os.replace(temporary, path)
    return path


def format_table(rows: Sequence[dict[str, str]], max_cell: int = 60) -> str:
    """Return the rows as an aligned plain-text table; long cells are cut to ``max_cell`` characters."""
    def cell(value: str) -> str:
        value = value.replace("\n", " ")
        return value if len(value) <= max_cell else value[: max_cell - 3] + "..."

    table = [list(COLUMNS)] + [[cell(row[column]) for column in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in table)
