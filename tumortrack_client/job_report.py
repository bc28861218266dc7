"""Plain-text tables of one finished job's results, read from its downloaded artifacts."""

from __future__ import annotations

import json
from pathlib import Path


def _format(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def segmentation_report(folder: Path) -> str:
    """Return one line per lesion of ``lesions.json``: id, volume (ml), long and short axis (mm)."""
    table = json.loads((folder / "lesions.json").read_text())
    lines = [f"{'lesion':>6}  {'volume_ml':>10}  {'long_axis_mm':>12}  {'short_axis_mm':>13}"]
    for row in table["lesions"]:
        lines.append(f"{row['id']:>6}  {_format(row.get('volume_ml'), 2):>10}  {_format(row.get('long_axis_mm')):>12}  {_format(row.get('short_axis_mm')):>13}")
    return "\n".join(lines)


def tracking_report(folder: Path) -> str:
    """Return one line per follow-up and lesion of ``correspondence.json``, and each follow-up's RECIST 1.1 response."""
    document = json.loads((folder / "correspondence.json").read_text())
    lines = [f"{'timepoint':>9}  {'lesion':>6}  {'status':<22}  {'volume_ml':>10}  {'change_%':>8}"]
    for followup in document["followups"]:
        for row in followup["lesions"]:
            lines.append(f"{row['timepoint']:>9}  {row['lesion_id']:>6}  {row['status']:<22}  {_format(row.get('volume_ml'), 2):>10}  {_format(row.get('volume_change_percent')):>8}")
    for followup in document["followups"]:
        recist = followup.get("recist") or {}
        lines.append(f"RECIST 1.1 at timepoint {followup['timepoint']}: {recist.get('response') or 'not assessable'}")
    return "\n".join(lines)
