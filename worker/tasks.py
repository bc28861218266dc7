"""Celery tasks. Arguments are keyword-only job ids, never objects, so a
redelivered message is safe: the job record and the store hold the rest."""

from __future__ import annotations

import errno
import logging
import traceback

import redis

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown

from lesions.errors import EngineUnavailable, InputError
from lesions.jobs import FINAL_STATES, JobRecord, JobState, utcnow
from lesions.metrics_store import count_job_state
from worker.celery_app import app
from worker.dicomweb_transfer import DicomwebError
from worker.runtime import get_runtime
from worker.segmentation_job import JobCancelled, JobContext, finish_failed, run_segmentation
from worker.tracking_job import run_tracking

logger = logging.getLogger("tumortrack.job")

MAX_TRANSIENT_RETRIES = 5
# errno values of a shared store that is briefly unreachable (NFS, a full or remounting volume).
TRANSIENT_OS_ERRORS = {errno.EIO, errno.ESTALE, errno.EAGAIN, errno.ETIMEDOUT, errno.ENOSPC}

INTERNAL_ERROR_MESSAGE = "The job failed because of an internal error; the operator can find the details in the worker log under this job id."


@worker_process_init.connect
def _start_process(**_):
    get_runtime()


@worker_process_shutdown.connect
def _stop_process(**_):
    get_runtime().shutdown()


def is_transient(error: BaseException) -> bool:
    """Return whether ``error`` may go away on its own, so the job is worth retrying."""
    if isinstance(error, DicomwebError):
        return error.transient
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_OS_ERRORS


def retry_delay_s(retries: int) -> int:
    """Return the exponential backoff before retry number ``retries + 1``: 5, 10, 20, 40, 80 s."""
    return min(5 * 2**retries, 300)


@app.task(name="tumortrack.segment", bind=True)
def segment(self, *, job_id: str) -> None:
    """Segment every prompted lesion of a segmentation job."""
    _run_job(self, job_id, run_segmentation)


@app.task(name="tumortrack.track", bind=True)
def track(self, *, job_id: str) -> None:
    """Track the baseline lesions of a tracking job through its follow-ups."""
    _run_job(self, job_id, run_tracking)


def _run_job(task, job_id: str, body) -> None:
    runtime = get_runtime()
    record = _mark_running(runtime, job_id)
    if record is None:
        return

    context = JobContext(runtime=runtime, record=record)
    retrying = False
    try:
        body(context)
    except JobCancelled:
        # The gateway already deleted the files; remove what this attempt wrote since.
        runtime.store.delete(job_id)
        logger.info("job=%s state=cancelled while running", job_id)
    except InputError as error:
        finish_failed(context, error.code, f"{error.field}: {error.message}")
    except EngineUnavailable as error:
        finish_failed(context, "engine_unavailable", str(error))
    except SoftTimeLimitExceeded:
        finish_failed(context, "time_limit", "The job ran past its time limit and was stopped; try fewer lesions or a smaller image.")
    except MemoryError:
        finish_failed(context, "out_of_memory", "The worker ran out of memory on this job; try a smaller image or fewer lesions.")
    except Exception as error:
        if is_transient(error) and task.request.retries < MAX_TRANSIENT_RETRIES:
            delay = retry_delay_s(task.request.retries)
            logger.warning("job=%s transient error %s: %s; retry %d in %d s", job_id, type(error).__name__, error, task.request.retries + 1, delay)
            retrying = True
            raise task.retry(countdown=delay, max_retries=MAX_TRANSIENT_RETRIES) from error
        if isinstance(error, DicomwebError):
            finish_failed(context, error.code, error.message)
            return
        logger.error("job=%s internal error\n%s", job_id, traceback.format_exc())
        finish_failed(context, "internal_error", INTERNAL_ERROR_MESSAGE)
    finally:
        if not retrying:
            runtime.jobs.mark_inactive(job_id, record.tenant)


def _mark_running(runtime, job_id: str) -> JobRecord | None:
    def change(record: JobRecord) -> JobRecord | None:
        if record.state in FINAL_STATES:
            return None
        record.state = JobState.running
        record.stage = "starting"
        record.attempts += 1
        record.worker = runtime.hostname
        record.started_at = record.started_at or utcnow()
        return record

    record = runtime.jobs.update(job_id, change)
    if record is None:
        logger.warning("job=%s has no record (expired or deleted); message dropped", job_id)
        return None
    if record.state != JobState.running:
        logger.info("job=%s already %s; message dropped", job_id, record.state.value)
        return None
    count_job_state(runtime.redis, runtime.jobs.prefix, "running", record.engine)
    logger.info("job=%s state=running attempt=%d engine=%s", job_id, record.attempts, record.engine)
    return record
