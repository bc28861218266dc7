"""The state file of a batch: what was submitted, which job each case has, what finished.

The file is rewritten whole after every change (temporary file, fsync,
rename), so a batch killed at any moment leaves either the old or the new
state, never a torn one. A rerun reads it to skip finished cases and to keep
waiting for submitted ones instead of submitting them again.

A kill between the service accepting a job and the state file recording its
id is covered by the Idempotency-Key. Each case sends the same key on every
run, derived from the batch id, the case id, its row's fingerprint and its
attempt number. So the service returns the job it already created for the
resubmission.

Rewriting the whole file costs O(cases) per change, about 400 bytes per case;
batches of thousands of cases are fine, millions are not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumortrack_client.layout import LOCK_FILE_NAME, STATE_FILE_NAME
from tumortrack_client.manifest import Case, Manifest

FORMAT_VERSION = 1

PENDING = "pending"
SUBMITTED = "submitted"
DONE = "done"


class StateFileError(Exception):
    """The state file exists but cannot be read as a batch state."""


@dataclass
class CaseRecord:
    """Progress of one case.

    ``status`` is pending (nothing submitted in this attempt), submitted (the
    service has a job, maybe unfinished) or done (finished and, when it
    succeeded, downloaded). ``state`` is the job's last seen state,
    ``rejected`` when the service rejected the submission, or ``expired``
    when the job succeeded but its artifacts were deleted before they were
    downloaded. ``attempt`` grows when a case is submitted anew (row edited,
    --retry-failed, job deleted), which changes its Idempotency-Key.
    """

    case_id: str
    fingerprint: str
    attempt: int = 1
    status: str = PENDING
    job_id: str | None = None
    state: str | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def start_over(self, fingerprint: str) -> None:
        """Forget the previous job and count a new attempt, so the next submission gets a new key."""
        self.fingerprint = fingerprint
        self.attempt += 1
        self.status = PENDING
        self.job_id = None
        self.state = None
        self.error = None
        self.summary = {}


class BatchState:
    """The state file of one output folder; methods are safe to call from several threads."""

    def __init__(self, path: Path, batch_id: str, records: dict[str, CaseRecord]):
        self.path = path
        self.batch_id = batch_id
        self._records = records
        self._lock = threading.Lock()

    @classmethod
    def open(cls, out_dir: Path, manifest: Manifest, retry_failed: bool = False) -> BatchState:
        """Load the folder's state file or start a new one, reconcile it with the manifest, and save it.

        A case whose row changed since the last run, or (with ``retry_failed``)
        that finished without succeeding, starts a new attempt. Cases of the
        state file that the manifest no longer lists are kept untouched.
        """
        path = out_dir / STATE_FILE_NAME
        state = cls._load(path) if path.exists() else cls(path, uuid.uuid4().hex, {})

        for case in manifest.cases:
            fingerprint = case.fingerprint()
            record = state._records.get(case.case_id)
            if record is None:
                state._records[case.case_id] = CaseRecord(case.case_id, fingerprint)
            elif record.fingerprint != fingerprint:
                record.start_over(fingerprint)
            elif retry_failed and record.status == DONE and record.state != "succeeded":
                record.start_over(fingerprint)

        state._save()
        return state

    def get(self, case_id: str) -> CaseRecord:
        with self._lock:
            return dataclasses.replace(self._records[case_id])

    def update(self, case_id: str, **changes: Any) -> CaseRecord:
        """Change fields of one case's record, save the file, and return a copy of the record."""
        with self._lock:
            record = self._records[case_id]
            for name, value in changes.items():
                setattr(record, name, value)
            self._save()
            return dataclasses.replace(record)

    def start_over(self, case_id: str) -> CaseRecord:
        with self._lock:
            record = self._records[case_id]
            record.start_over(record.fingerprint)
            self._save()
            return dataclasses.replace(record)

    def idempotency_key(self, case: Case) -> str:
        """Return the key the service ties to this case's current attempt; the same on every run."""
        record = self.get(case.case_id)
        digest = hashlib.sha256(f"{case.case_id}\0{record.fingerprint}\0{record.attempt}".encode()).hexdigest()[:32]
        return f"tumortrack-batch-{self.batch_id}-{digest}"

    @classmethod
    def _load(cls, path: Path) -> BatchState:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("format_version") != FORMAT_VERSION:
                raise StateFileError(f"state file {path} has format version {document.get('format_version')!r}; this client reads version {FORMAT_VERSION}")
            records = {case_id: CaseRecord(**fields) for case_id, fields in document["cases"].items()}
            return cls(path, str(document["batch_id"]), records)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise StateFileError(f"state file {path} cannot be read ({type(error).__name__}: {error}); move it away to start the batch anew, which submits every case again") from error

    def _save(self) -> None:
        """Write the whole state to a temporary file beside the state file and rename it over the old one."""
        document = {
            "format_version": FORMAT_VERSION,
            "batch_id": self.batch_id,
            "cases": {case_id: dataclasses.asdict(record) for case_id, record in self._records.items()},
        }
        descriptor, temporary = tempfile.mkstemp(prefix=f".{STATE_FILE_NAME}.", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_folder(self.path.parent)


@contextlib.contextmanager
def exclusive_run(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder, so two runs never write one state file at once.

    The operating system releases the lock when the process ends, also when it is killed.
    """
    with open(out_dir / LOCK_FILE_NAME, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateFileError(f"another tumortrack batch is running on {out_dir} (it has locked {out_dir / LOCK_FILE_NAME}); wait for it to end or give another --out") from None
        yield


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; some file systems do not support fsync on a folder, which is harmless here."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
