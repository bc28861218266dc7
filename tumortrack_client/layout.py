"""Layout of a batch's output folder.

OUT/batch-state.json  progress of every case, rewritten atomically after each step
OUT/.batch.lock       locked while a run uses the folder
OUT/summary.csv       one row per case: job id, state, lesion count, volumes, error
OUT/<case_id>/        the case's artifacts, present only once all of them downloaded
"""

from __future__ import annotations

from pathlib import Path

STATE_FILE_NAME = "batch-state.json"
LOCK_FILE_NAME = ".batch.lock"
SUMMARY_FILE_NAME = "summary.csv"
RESERVED_NAMES = frozenset({STATE_FILE_NAME, SUMMARY_FILE_NAME})


def remove_temporary_files(out_dir: Path) -> None:
    """Delete temporary files that a run killed while writing the state file or the summary left behind."""
    for name in RESERVED_NAMES:
        for leftover in out_dir.glob(f".{name}.*"):
            leftover.unlink(missing_ok=True)


def case_folder(out_dir: Path, case_id: str) -> Path:
    return out_dir / case_id


def partial_case_folder(out_dir: Path, case_id: str) -> Path:
    """Return the hidden folder a case's artifacts download into before it is renamed to its final name."""
    return out_dir / f".{case_id}.partial"
