"""Run one segmentation job: read the inputs from the store, segment every
prompted lesion, measure, export, and keep the job record up to date.

Each stage logs one line with the job id, sizes and its duration; nothing
from the image header (patient names, IDs, dates) is ever logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from lesions.deferred_prompts import resolve_stored_prompts
from lesions.dicom_seg import derived_seg_uids, write_dicom_seg
from lesions.geometry import ImageGeometry
from lesions.image_inputs import LoadedImage, load_image_input
from lesions.image_io import write_label_map
from lesions.jobs import ArtifactInfo, JobError, JobRecord, JobState, utcnow
from lesions.label_map import compose_instances
from lesions.lesion_table import lesions_to_csv, lesions_to_json
from lesions.measurements import measure_lesions
from lesions.metrics_store import count_job_state, observe_stage
from lesions.preview import render_preview
from lesions.store import media_type_of
from lesions.prompt_types import LesionPrompt, prompt_from_dict
from worker.dicomweb_steps import request_field, retrieve_if_referenced, store_artifact
from worker.engines.base import EngineOptions
from worker.runtime import WorkerRuntime

logger = logging.getLogger("tumortrack.job")

class JobCancelled(Exception):
    """The client cancelled the job while it ran; stop without writing a result."""


@dataclass
class JobContext:
    runtime: WorkerRuntime
    record: JobRecord
    started: float = field(default_factory=time.perf_counter)

    @property
    def job_id(self) -> str:
        return self.record.id

    def enter_stage(self, stage: str, progress: float) -> float:
        """Record the new stage, fail fast on cancellation, and return the stage's start time."""
        def change(record: JobRecord) -> JobRecord | None:
            if record.state == JobState.cancelled:
                return None
            record.stage = stage
            record.progress = max(record.progress, progress)
            return record

        updated = self.runtime.jobs.update(self.job_id, change)
        if updated is None or updated.state == JobState.cancelled:
            raise JobCancelled(self.job_id)
        return time.perf_counter()

    def stage_done(self, stage: str, started: float, **sizes) -> float:
        """Log the stage's one line (job id, sizes, seconds), record its duration and return it."""
        seconds = time.perf_counter() - started
        details = " ".join(f"{key}={value}" for key, value in sizes.items())
        logger.info("job=%s stage=%s %s seconds=%.2f", self.job_id, stage, details, seconds)
        observe_stage(self.runtime.redis, self.runtime.jobs.prefix, stage, seconds)
        return seconds

    def report_progress(self, progress: float) -> None:
        def change(record: JobRecord) -> JobRecord | None:
            if record.state != JobState.running:
                return None
            record.progress = max(record.progress, min(progress, 1.0))
            return record

        self.runtime.jobs.update(self.job_id, change)


def run_segmentation(context: JobContext) -> None:
    runtime, job_id = context.runtime, context.job_id
    inputs = runtime.store.inputs_dir(job_id)
    options = context.record.options

    image_options = retrieve_if_referenced(context, inputs, options["image"], "image", 0.02)

    started = context.enter_stage("loading", 0.05)
    loaded = load_image_input(inputs, image_options, request_field(options["image"], "image", "image_reference"))
    image = loaded.image
    resolve_stored_prompts(inputs / "prompts.json", ImageGeometry.of(image))
    prompts = _read_prompts(inputs)
    context.stage_done("loading", started, size=list(image.GetSize()), spacing=[round(s, 3) for s in image.GetSpacing()], lesions=len(prompts))

    started = context.enter_stage("segmenting", 0.1)
    engine = runtime.engines.get(context.record.engine)
    engine_options = EngineOptions(test_time_augmentation=options.get("test_time_augmentation"))
    masks = engine.segment(image, prompts, engine_options, progress=lambda fraction: context.report_progress(0.1 + 0.7 * fraction))
    labels, overlap_warnings = compose_instances(masks, sitk.GetArrayViewFromImage(image).shape)
    engine_seconds = context.stage_done("segmenting", started, engine=engine.name, lesions=len(masks), labelled_voxels=int(np.count_nonzero(labels)))

    started = context.enter_stage("measuring", 0.8)
    measurements = measure_lesions(image, labels, {prompt.lesion_id: prompt.describe() for prompt in prompts})
    context.stage_done("measuring", started, lesions=len(measurements))

    started = context.enter_stage("exporting", 0.9)
    artifacts = export_segmentation(context, loaded, labels, measurements, engine_seconds)
    context.stage_done("exporting", started, artifacts=len(artifacts), bytes=sum(a.size for a in artifacts))

    if options.get("store_seg"):
        store_artifact(context, "seg.dcm", options["image"]["server"], 0.95)

    finish_succeeded(context, artifacts, overlap_warnings)


def export_segmentation(context: JobContext, loaded: LoadedImage, labels: np.ndarray, measurements, engine_seconds: float) -> list[ArtifactInfo]:
    store, job_id, image = context.runtime.store, context.job_id, loaded.image

    with store.staged_artifact(job_id, "mask.nii.gz") as path:
        write_label_map(labels, image, path)

    table = lesions_to_json(measurements, extra={"job_id": job_id, "engine": context.record.engine, "engine_seconds": round(engine_seconds, 3), "image_geometry": _geometry(image)})
    store.write_artifact(job_id, "lesions.json", json.dumps(table, indent=2).encode())
    store.write_artifact(job_id, "lesions.csv", lesions_to_csv(measurements).encode())
    store.write_artifact(job_id, "preview.png", render_preview(image, labels, measurements, title=f"job {job_id[:8]}"))

    if loaded.dicom is not None:
        with store.staged_artifact(job_id, "seg.dcm") as path:
            write_dicom_seg(labels, loaded.dicom, [m.lesion_id for m in measurements], path, uids=derived_seg_uids(job_id, "seg.dcm"))

    return describe_artifacts(context)


def describe_artifacts(context: JobContext) -> list[ArtifactInfo]:
    return [ArtifactInfo(name=path.name, media_type=media_type_of(path.name), size=path.stat().st_size) for path in context.runtime.store.list_artifacts(context.job_id)]


def finish_succeeded(context: JobContext, artifacts: list[ArtifactInfo], warnings: list[str]) -> None:
    def change(record: JobRecord) -> JobRecord | None:
        if record.state == JobState.cancelled:
            return None
        record.state = JobState.succeeded
        record.stage = None
        record.progress = 1.0
        record.finished_at = utcnow()
        record.artifacts = artifacts
        record.warnings = [*record.warnings, *warnings]
        return record

    if context.runtime.jobs.update(context.job_id, change) is not None:
        count_job_state(context.runtime.redis, context.runtime.jobs.prefix, "succeeded", context.record.engine)
    logger.info("job=%s state=succeeded seconds=%.2f", context.job_id, time.perf_counter() - context.started)


def finish_failed(context: JobContext, code: str, message: str) -> None:
    def change(record: JobRecord) -> JobRecord | None:
        if record.state == JobState.cancelled:
            return None
        record.state = JobState.failed
        record.finished_at = utcnow()
        record.error = JobError(code=code, message=message)
        return record

    if context.runtime.jobs.update(context.job_id, change) is not None:
        count_job_state(context.runtime.redis, context.runtime.jobs.prefix, "failed", context.record.engine)
    logger.info("job=%s state=failed code=%s seconds=%.2f", context.job_id, code, time.perf_counter() - context.started)


def _read_prompts(inputs) -> list[LesionPrompt]:
    document = json.loads((inputs / "prompts.json").read_text())
    return [prompt_from_dict(entry) for entry in document["lesions"]]


def _geometry(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()), "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())}
