"""Progress display of a batch: a tqdm bar on a terminal, one plain line per event otherwise (logs, CI)."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from tumortrack_client.batch_state import CaseRecord


class BatchProgress:
    """Counts finished cases; safe to call from the batch's worker threads."""

    def __init__(self, total: int, already_done: int, stream: TextIO = sys.stderr, bar: bool | None = None):
        self.total = total
        self.done = already_done
        self._stream = stream
        self._lock = threading.Lock()
        self._bar = None
        if bar is None:
            bar = stream.isatty()
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=already_done, unit="case", file=stream, dynamic_ncols=True)
        if already_done:
            self.message(f"resuming: {already_done} of {total} cases finished in an earlier run")

    def message(self, text: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.write(text, file=self._stream)
            else:
                print(text, file=self._stream, flush=True)

    def case_submitted(self, case_id: str, job_id: str, replayed: bool) -> None:
        outcome = "the service returned the job of an earlier submission" if replayed else "queued"
        self.message(f"{case_id}: submitted as job {job_id} ({outcome})")

    def case_stopped(self, record: CaseRecord, finished: bool) -> None:
        """Report a case that finished, or that stopped unfinished on an error a rerun may get past."""
        with self._lock:
            if finished:
                self.done += 1
            counter = f"[{self.done}/{self.total}]"
        outcome = record.state if finished else "unfinished"
        detail = f": {record.error}" if record.error else ""
        self.message(f"{counter} {record.case_id}: {outcome}{detail}")
        if finished and self._bar is not None:
            with self._lock:
                self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
