"""Run every case of a manifest through the service, resumably, several at a time.

Each case goes pending -> submitted -> done, and the state file records every
step before the next starts (see batch_state). Worker threads each carry one
case from submission to download. The client retries 429 until the service's
queue has room, so ``concurrency`` only bounds how many uploads and polls run
at once.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tumortrack_client.batch_state import DONE, PENDING, SUBMITTED, BatchState, CaseRecord, exclusive_run
from tumortrack_client.client import TumorTrackClient
from tumortrack_client.errors import ApiError, InputFileError, TumorTrackError
from tumortrack_client.layout import case_folder, partial_case_folder, remove_temporary_files
from tumortrack_client.manifest import Case, Manifest
from tumortrack_client.models import Job, SubmittedJob
from tumortrack_client.progress import BatchProgress
from tumortrack_client.summary import summarize_artifacts, summary_rows, write_summary

logger = logging.getLogger("tumortrack_client.batch")

# Statuses with which the service rejects the case's own input. Any other
# error (401 for a wrong key, 404, 5xx) is not the case's fault, so the case
# stays unfinished for a rerun.
CASE_REJECTED_STATUSES = frozenset({400, 413, 415, 422})
# A job that vanished (deleted, expired) is submitted again at most this many times per run.
MAX_RESUBMISSIONS = 1


@dataclass(frozen=True)
class BatchOutcome:
    """Result of a run: one record per manifest case, in manifest order, and the summary table and its path."""

    records: list[CaseRecord]
    summary_path: Path
    summary: list[dict[str, str]]

    @property
    def all_succeeded(self) -> bool:
        return all(record.status == DONE and record.state == "succeeded" for record in self.records)

    @property
    def unfinished(self) -> int:
        return sum(record.status != DONE for record in self.records)


def run_batch(client: TumorTrackClient, manifest: Manifest, out_dir: Path, *, concurrency: int = 4, retry_failed: bool = False, wait_timeout_s: float | None = None, progress_bar: bool | None = None) -> BatchOutcome:
    """Submit, wait for and download every case not finished in an earlier run; write the summary.

    ``progress_bar`` None shows a bar only when standard error is a terminal.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_run(out_dir):
        remove_temporary_files(out_dir)
        state = BatchState.open(out_dir, manifest, retry_failed=retry_failed)
        todo = [case for case in manifest.cases if state.get(case.case_id).status != DONE]
        progress = BatchProgress(total=len(manifest.cases), already_done=len(manifest.cases) - len(todo), bar=progress_bar)
        logger.info("batch %s: %d cases, %d to run, concurrency %d", state.batch_id, len(manifest.cases), len(todo), concurrency)
        _run_cases(client, state, todo, out_dir, concurrency, wait_timeout_s, progress)

        records = [state.get(case.case_id) for case in manifest.cases]
        rows = summary_rows(manifest.cases, records)
        return BatchOutcome(records=records, summary_path=write_summary(out_dir, rows), summary=rows)


def _run_cases(client: TumorTrackClient, state: BatchState, todo: list[Case], out_dir: Path, concurrency: int, wait_timeout_s: float | None, progress: BatchProgress) -> None:
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="case")
    try:
        futures = [pool.submit(_run_case, client, state, case, out_dir, wait_timeout_s, progress) for case in todo]
        for future in as_completed(futures):
            record = future.result()
            progress.case_stopped(record, finished=record.status == DONE)
    except KeyboardInterrupt:
        # Cases not started are dropped; the running ones cannot be stopped from here, so the caller exits the process.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown()
    finally:
        progress.close()


def _run_case(client: TumorTrackClient, state: BatchState, case: Case, out_dir: Path, wait_timeout_s: float | None, progress: BatchProgress) -> CaseRecord:
    """Carry one case as far as it goes and return its record; errors are stored in the record instead of raised."""
    try:
        return _advance(client, state, case, out_dir, wait_timeout_s, progress)
    except (InputFileError, ApiError) as error:
        if isinstance(error, ApiError) and error.status not in CASE_REJECTED_STATUSES:
            return state.update(case.case_id, error=str(error))
        return state.update(case.case_id, status=DONE, state="rejected", error=str(error))
    except TumorTrackError as error:
        return state.update(case.case_id, error=str(error))
    except Exception as error:  # noqa: BLE001 - one case's bug must not stop the others
        logger.exception("case %s: unexpected error", case.case_id)
        return state.update(case.case_id, error=f"unexpected client error ({type(error).__name__}: {error})")


def _advance(client: TumorTrackClient, state: BatchState, case: Case, out_dir: Path, wait_timeout_s: float | None, progress: BatchProgress) -> CaseRecord:
    record = state.get(case.case_id)
    job = None
    for _ in range(MAX_RESUBMISSIONS + 1):
        if record.status == PENDING:
            submitted = _submit(client, case, state.idempotency_key(case))
            record = state.update(case.case_id, status=SUBMITTED, job_id=submitted.id, state=submitted.state, error=None)
            progress.case_submitted(case.case_id, submitted.id, submitted.replayed)
        try:
            job = client.wait(record.job_id, timeout_s=wait_timeout_s)
            break
        except ApiError as error:
            if error.status != 404:
                raise
            logger.warning("case %s: job %s no longer exists on the service; submitting the case again", case.case_id, record.job_id)
            record = state.start_over(case.case_id)
    if job is None:
        return state.update(case.case_id, error=f"job {record.job_id} disappeared from the service right after submission; rerun the batch")

    if job.state != "succeeded":
        return state.update(case.case_id, status=DONE, state=job.state, error=_job_error(job))
    try:
        _download(client, job, out_dir, case.case_id)
    except ApiError as error:
        if error.status != 410:
            raise
        return state.update(case.case_id, status=DONE, state="expired", error=f"{error}; run again with --retry-failed to submit the case anew")
    summary = summarize_artifacts(case_folder(out_dir, case.case_id), case.kind)
    return state.update(case.case_id, status=DONE, state=job.state, error=None, summary=summary)


def _submit(client: TumorTrackClient, case: Case, idempotency_key: str) -> SubmittedJob:
    if case.kind == "track":
        return client.submit_tracking(
            case.image,
            list(case.followups),
            prompts=case.prompts,
            baseline_mask=case.mask,
            followup_prompts=list(case.followup_prompts) or None,
            engine=case.engine,
            baseline_series_uid=case.series_uid,
            idempotency_key=idempotency_key,
        )
    return client.submit_segmentation(case.image, case.prompts, engine=case.engine, series_uid=case.series_uid, idempotency_key=idempotency_key)


def _download(client: TumorTrackClient, job: Job, out_dir: Path, case_id: str) -> None:
    """Download into a hidden folder and rename it, so OUT/<case_id>/ exists only with every artifact in it."""
    partial = partial_case_folder(out_dir, case_id)
    final = case_folder(out_dir, case_id)
    shutil.rmtree(partial, ignore_errors=True)
    client.download_artifacts(job, partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)


def _job_error(job: Job) -> str:
    if job.error is None:
        return f"job ended {job.state}"
    return f"{job.error.code}: {job.error.message}"
