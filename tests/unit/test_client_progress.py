"""Batch progress output: plain lines when not on a terminal, a tqdm bar when asked for one."""

from __future__ import annotations

import io

from tumortrack_client.batch_state import CaseRecord
from tumortrack_client.progress import BatchProgress


def test_progress_plain_lines():
    stream = io.StringIO()
    progress = BatchProgress(total=3, already_done=1, stream=stream)

    progress.case_submitted("c2", "job-2", replayed=True)
    progress.case_stopped(CaseRecord("c2", "f", state="succeeded"), finished=True)
    progress.case_stopped(CaseRecord("c3", "f", state="queued", error="no answer from the service"), finished=False)
    progress.close()

    assert stream.getvalue().splitlines() == [
        "resuming: 1 of 3 cases finished in an earlier run",
        "c2: submitted as job job-2 (the service returned the job of an earlier submission)",
        "[2/3] c2: succeeded",
        "[2/3] c3: unfinished: no answer from the service",
    ]


def test_progress_bar_counts_finished_cases():
    stream = io.StringIO()
    progress = BatchProgress(total=4, already_done=2, stream=stream, bar=True)

    progress.case_stopped(CaseRecord("c3", "f", state="failed", error="internal_error: boom"), finished=True)
    progress.close()

    output = stream.getvalue()
    assert "3/4" in output
    assert "[3/4] c3: failed: internal_error: boom" in output
