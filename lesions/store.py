"""The job store: a folder on a volume every gateway and worker mounts.

Layout: ``<root>/jobs/<job id>/inputs/`` contains what the client uploaded (after
checks), ``<root>/jobs/<job id>/artifacts/`` what the worker produced. Volumes
never travel through Redis. Every artifact is written to a temporary name in
the same folder and renamed into place, so a reader never sees half a file and
a retried job simply replaces the files of the attempt that died.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

CREATED_MARKER = ".created"
MEDIA_TYPES = {
    ".nii.gz": "application/gzip",
    ".json": "application/json",
    ".csv": "text/csv",
    ".png": "image/png",
    ".dcm": "application/dicom",
}
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def media_type_of(name: str) -> str:
    """Return the media type of an artifact from its file name."""
    for suffix, media_type in MEDIA_TYPES.items():
        if name.endswith(suffix):
            return media_type
    return "application/octet-stream"


class JobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def inputs_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "inputs"

    def artifacts_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "artifacts"

    def create(self, job_id: str) -> Path:
        """Create the job's folders and return its inputs folder."""
        inputs = self.inputs_dir(job_id)
        inputs.mkdir(parents=True, exist_ok=False)
        self.artifacts_dir(job_id).mkdir()
        (self.job_dir(job_id) / CREATED_MARKER).write_text(f"{time.time():.3f}")
        return inputs

    def created_at(self, job_id: str) -> float:
        """Return when the job's folder was created (epoch seconds)."""
        marker = self.job_dir(job_id) / CREATED_MARKER
        try:
            return float(marker.read_text())
        except (OSError, ValueError):
            return self.job_dir(job_id).stat().st_mtime

    def job_ids(self) -> list[str]:
        folder = self.root / "jobs"
        return sorted(path.name for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []

    def artifact_path(self, job_id: str, name: str) -> Path | None:
        """Return the path of an existing artifact, or None; names never leave the folder."""
        if not ARTIFACT_NAME.match(name):
            return None
        path = self.artifacts_dir(job_id) / name
        return path if path.is_file() else None

    def list_artifacts(self, job_id: str) -> list[Path]:
        folder = self.artifacts_dir(job_id)
        if not folder.is_dir():
            return []
        return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))

    def write_artifact(self, job_id: str, name: str, data: bytes) -> Path:
        """Write ``data`` atomically as artifact ``name``."""
        with self.staged_artifact(job_id, name) as temporary:
            temporary.write_bytes(data)
        return self.artifacts_dir(job_id) / name

    def staged_artifact(self, job_id: str, name: str) -> "_StagedFile":
        """Return a context manager giving a temporary path that becomes ``name`` on success."""
        if not ARTIFACT_NAME.match(name):
            raise ValueError(f"invalid artifact name {name!r}")
        return _StagedFile(self.artifacts_dir(job_id), name)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


class _StagedFile:
    def __init__(self, folder: Path, name: str):
        self.folder = folder
        self.final = folder / name
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Keep the final suffix so writers that pick a format from it (ITK) still work.
        suffix = "".join(Path(self.final.name).suffixes)
        handle, name = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=self.folder)
        os.close(handle)
        self.path = Path(name)
        return self.path

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            os.replace(self.path, self.final)
        else:
            self.path.unlink(missing_ok=True)
