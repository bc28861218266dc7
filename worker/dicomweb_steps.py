"""The job stages that talk to a DICOMweb server: retrieving a referenced image
before loading, and storing a SEG artifact after exporting.

Each stage logs one line with the job id, the server name, counts, bytes and
seconds, never a UID.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lesions.dicomweb_reference import REFERENCE_KIND, DicomwebReference
from lesions.dicomweb_servers import DicomwebServer
from lesions.jobs import JobRecord, JobState, StoredDicom
from lesions.settings import get_settings
from worker.dicomweb_transfer import DicomwebError, retrieve_series, store_instance

if TYPE_CHECKING:
    from worker.segmentation_job import JobContext


def retrieve_if_referenced(context: JobContext, inputs: Path, image_options: dict, stem: str, progress: float) -> dict:
    """Return image options the series reader understands, retrieving a referenced series first."""
    if image_options["kind"] != REFERENCE_KIND:
        return image_options

    reference = DicomwebReference.from_options(image_options)
    server = configured_server(reference.server)
    started = context.enter_stage("retrieving", progress)
    retrieved = retrieve_series(reference, server, inputs, stem, get_settings().max_upload_bytes)
    context.stage_done("retrieving", started, server=reference.server, image=stem, instances=retrieved.instances, bytes=retrieved.bytes, reused=retrieved.reused)
    return retrieved.options


def store_artifact(context: JobContext, artifact: str, server_name: str, progress: float) -> StoredDicom:
    """Store the artifact with STOW-RS and add its UIDs to the job record."""
    server = configured_server(server_name)
    path = context.runtime.store.artifacts_dir(context.job_id) / artifact
    started = context.enter_stage("storing", progress)
    instance = store_instance(path, server_name, server)
    context.stage_done("storing", started, server=server_name, artifact=artifact, bytes=path.stat().st_size)

    stored = StoredDicom(artifact=artifact, server=server_name, **vars(instance))

    def change(record: JobRecord) -> JobRecord | None:
        if record.state == JobState.cancelled:
            return None
        record.dicomweb_stored = [*(item for item in record.dicomweb_stored if item.artifact != artifact), stored]
        return record

    context.runtime.jobs.update(context.job_id, change)
    return stored


def request_field(image_options: dict, upload_field: str, reference_field: str) -> str:
    """Return the request field that errors about this image name: the upload's or the reference's."""
    return reference_field if image_options["kind"] == REFERENCE_KIND else upload_field


def configured_server(name: str) -> DicomwebServer:
    """Return the worker's configuration of server ``name``.

    The gateway accepted the name from its own configuration; a worker
    configured differently fails the job instead of guessing.
    """
    server = get_settings().dicomweb_servers.get(name)
    if server is None:
        raise DicomwebError("dicomweb_server_not_configured", f"This worker has no DICOMweb server named '{name}'; the operator must give gateway and workers the same TUMORTRACK_DICOMWEB_SERVERS.")
    return server
