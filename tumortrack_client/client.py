"""A typed client of the TumorTrack HTTP API (version 1), over httpx.

It talks to the service only through the documented endpoints: submit a
segmentation or a tracking job, poll it until it finishes, download its
artifacts. Every request is retried as ``RetryPolicy`` describes, and every
submission carries an ``Idempotency-Key`` so that a retry after a lost
response returns the job the first attempt created instead of a second one.

One client may be shared by several threads: httpx.Client is thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tumortrack_client.errors import ApiError, ServiceUnavailableError, TumorTrackError, WaitTimeoutError
from tumortrack_client.models import Job, SubmittedJob
from tumortrack_client.retry import RETRY_STATUSES, RetryPolicy, parse_retry_after
from tumortrack_client.uploads import PromptsInput, image_file, prompts_text, volume_file

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "TUMORTRACK_URL"
API_KEY_ENV = "TUMORTRACK_API_KEY"
DOWNLOAD_CHUNK_BYTES = 1 << 20

logger = logging.getLogger("tumortrack_client")

FilesFactory = Callable[[contextlib.ExitStack], list[tuple[str, Any]]]


def new_idempotency_key() -> str:
    return f"tumortrack-{uuid.uuid4().hex}"


class TumorTrackClient:
    """Client of one TumorTrack service.

    ``base_url`` defaults to ``$TUMORTRACK_URL``, else http://127.0.0.1:8000.
    ``api_key`` defaults to ``$TUMORTRACK_API_KEY`` and is sent as
    ``Authorization: Bearer``. ``timeout_s`` bounds each network read or write,
    not a whole upload. ``sleep`` is what the client waits with between
    attempts and polls, replaceable in tests.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10.0), transport=transport)

    def __enter__(self) -> TumorTrackClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit_segmentation(
        self,
        image: Path,
        prompts: PromptsInput,
        *,
        engine: str | None = None,
        series_uid: str | None = None,
        test_time_augmentation: bool | None = None,
        idempotency_key: str | None = None,
    ) -> SubmittedJob:
        """Upload one CT (a volume file, a DICOM folder or a DICOM .zip) with its prompts and return the queued job."""
        data = _form_fields(prompts=prompts_text(prompts, "prompts"), series_uid=series_uid, engine=engine, test_time_augmentation=test_time_augmentation)
        with image_file(image, "image") as upload:
            response = self._send("POST", "/v1/segmentations", data=data, files=lambda handles: [upload.part("image", handles)], idempotency_key=idempotency_key)
        return _submitted(response)

    def submit_tracking(
        self,
        baseline: Path,
        followups: Sequence[Path],
        *,
        prompts: PromptsInput | None = None,
        baseline_mask: Path | None = None,
        followup_prompts: Sequence[PromptsInput | None] | None = None,
        engine: str | None = None,
        baseline_series_uid: str | None = None,
        test_time_augmentation: bool | None = None,
        idempotency_key: str | None = None,
    ) -> SubmittedJob:
        """Upload a baseline, its follow-ups in time order and the baseline's prompts or mask; return the queued job.

        ``followup_prompts`` has one entry per follow-up, None where that
        follow-up has no prompts. Raises ValueError when neither or both of
        ``prompts`` and ``baseline_mask`` are given, or when the counts differ.
        """
        if (prompts is None) == (baseline_mask is None):
            raise ValueError("give exactly one of prompts (baseline prompt JSON) or baseline_mask (instance label volume)")
        if not followups:
            raise ValueError("followups is empty; give at least one follow-up image")
        if followup_prompts is not None and len(followup_prompts) != len(followups):
            raise ValueError(f"followup_prompts has {len(followup_prompts)} entries for {len(followups)} follow-ups; give one per follow-up, None for none")

        data = _form_fields(
            prompts=prompts_text(prompts, "prompts") if prompts is not None else None,
            baseline_series_uid=baseline_series_uid,
            engine=engine,
            test_time_augmentation=test_time_augmentation,
        )
        if followup_prompts is not None:
            data["followup_prompts"] = [prompts_text(p, f"followup_prompts[{i}]") if p is not None else "" for i, p in enumerate(followup_prompts)]
        mask = volume_file(baseline_mask, "baseline mask") if baseline_mask is not None else None

        with contextlib.ExitStack() as temporary:
            baseline_upload = temporary.enter_context(image_file(baseline, "baseline"))
            followup_uploads = [temporary.enter_context(image_file(path, f"follow-up {i + 1}")) for i, path in enumerate(followups)]

            def parts(handles: contextlib.ExitStack) -> list[tuple[str, Any]]:
                entries = [baseline_upload.part("baseline", handles)]
                entries += [upload.part("followups", handles) for upload in followup_uploads]
                if mask is not None:
                    entries.append(mask.part("baseline_mask", handles))
                return entries

            response = self._send("POST", "/v1/trackings", data=data, files=parts, idempotency_key=idempotency_key)
        return _submitted(response)

    def get_job(self, job_id: str) -> Job:
        job, _ = self._poll(job_id)
        return job

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        poll_interval_s: float = 0.5,
        max_poll_interval_s: float = 5.0,
        on_update: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll a job until it succeeds, fails or is cancelled, and return it.

        The interval grows from ``poll_interval_s`` to ``max_poll_interval_s``;
        a ``Retry-After`` on a job response sets the next interval instead.
        Raises WaitTimeoutError after ``timeout_s`` seconds (None: no limit).
        """
        deadline = time.monotonic() + timeout_s if timeout_s is not None else None
        interval = poll_interval_s
        while True:
            job, retry_after = self._poll(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(f"job {job_id} is still {job.state} (stage {job.stage}) after {timeout_s:.0f} s")

            self._sleep(retry_after if retry_after is not None else interval)
            interval = min(interval * 1.5, max_poll_interval_s)

    def download_artifacts(self, job: Job, folder: Path, names: Sequence[str] | None = None) -> list[Path]:
        """Download a finished job's artifacts (all, or ``names``) into ``folder``; return the written paths.

        Each file is written under a temporary name and renamed when complete,
        so an interrupted download never leaves a truncated artifact.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        requested = [artifact for artifact in job.artifacts if names is None or artifact.name in names]
        missing = set(names or ()) - {artifact.name for artifact in requested}
        if missing:
            raise TumorTrackError(f"job {job.id} has no artifacts {sorted(missing)}; it has {[a.name for a in job.artifacts]}")

        written = []
        for artifact in requested:
            written.append(self._download(job.id, artifact.name, folder))
        return written

    def delete_job(self, job_id: str) -> None:
        """Cancel an unfinished job, or delete a finished one's files and record."""
        self._send("DELETE", f"/v1/jobs/{job_id}").close()

    def _poll(self, job_id: str) -> tuple[Job, float | None]:
        response = self._send("GET", f"/v1/jobs/{job_id}")
        return Job.from_json(response.json()), parse_retry_after(response.headers.get("Retry-After"))

    def _download(self, job_id: str, name: str, folder: Path) -> Path:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise TumorTrackError(f"job {job_id} lists an artifact name {name!r} that is not a plain file name; not downloading it")
        destination = folder / name
        partial = folder / f".{name}.part"

        response = self._send("GET", f"/v1/jobs/{job_id}/artifacts/{name}", stream=True)
        try:
            with open(partial, "wb") as output:
                for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                    output.write(chunk)
        except httpx.TransportError as error:
            partial.unlink(missing_ok=True)
            raise ServiceUnavailableError(f"download of {name} of job {job_id} broke off: {error}") from error
        finally:
            response.close()
        os.replace(partial, destination)
        return destination

    def _send(
        self,
        method: str,
        path: str,
        *,
        data: dict[str, Any] | None = None,
        files: FilesFactory | None = None,
        idempotency_key: str | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request, retrying as the policy allows; return a 2xx response or raise.

        ``files`` opens the file parts anew for every attempt, so a retry
        sends whole files again. POSTs always carry an Idempotency-Key.
        """
        headers = {}
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or new_idempotency_key()
        failures = 0
        queue_full = 0
        queue_wait_s = 0.0

        while True:
            try:
                with contextlib.ExitStack() as handles:
                    request = self._http.build_request(method, path, data=data, files=files(handles) if files else None, headers=headers)
                    response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                failures += 1
                if failures > self.retry.max_retries:
                    raise ServiceUnavailableError(f"{method} {path}: no response from {self.base_url} after {failures} attempts ({type(error).__name__}: {error}); check that the service runs and the URL is right") from error
                delay = self.retry.backoff_s(failures)
                logger.warning("%s %s failed with %s: %s; retry %d of %d in %.1f s", method, path, type(error).__name__, error, failures, self.retry.max_retries, delay)
                self._sleep(delay)
                continue

            if response.status_code < 400:
                return response
            if stream:
                response.read()
            response.close()
            if response.status_code not in RETRY_STATUSES:
                raise _api_error(response)

            retry_after = response.headers.get("Retry-After")
            if response.status_code == 429:
                queue_full += 1
                delay = self.retry.delay_s(queue_full, retry_after)
                queue_wait_s += delay
                if queue_wait_s > self.retry.queue_full_max_wait_s:
                    raise ServiceUnavailableError(f"{method} {path}: the service's queue stayed full for {queue_wait_s - delay:.0f} s: {_api_error(response).message}")
                logger.info("%s %s: queue full (429), retry in %.1f s as Retry-After %s asks", method, path, delay, retry_after)
            else:
                failures += 1
                if failures > self.retry.max_retries:
                    raise ServiceUnavailableError(f"{method} {path}: the service responded {response.status_code} {failures} times: {_api_error(response).message}")
                delay = self.retry.delay_s(failures, retry_after)
                logger.warning("%s %s: service responded %d; retry %d of %d in %.1f s", method, path, response.status_code, failures, self.retry.max_retries, delay)
            self._sleep(delay)


def _form_fields(**values: Any) -> dict[str, Any]:
    fields = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            fields[name] = "true" if value else "false"
        else:
            fields[name] = str(value)
    return fields


def _submitted(response: httpx.Response) -> SubmittedJob:
    body = response.json()
    return SubmittedJob(id=body["id"], state=body["state"], replayed=response.headers.get("Idempotent-Replayed") == "true")


def _api_error(response: httpx.Response) -> ApiError:
    """Build an ApiError from the service's error body, or from the status line when the body is not one."""
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, str(error.get("code", "error")), str(error.get("message", "")), error.get("field"))
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()[:300]
        return ApiError(response.status_code, "http_error", text or response.reason_phrase)
