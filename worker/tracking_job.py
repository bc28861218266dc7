"""Run one tracking job.

The job segments (or reads) the baseline lesions and carries them to each
follow-up in turn. Lesions clicked in a follow-up and not tracked there become
new lesions. Then every time point is measured, and the job writes masks,
lesion tables, the correspondence table with the RECIST 1.1 assessment, and
previews.

Lesion ids never change: the id a lesion has at baseline is its label value in
every ``mask_t<i>.nii.gz``. A new lesion gets the next unused id.

An engine with its own tracking model (lesionlocator with ``LesionLocatorTrack``)
carries the lesions with that model. Other engines, and lesionlocator without the
model, use the classical tracker: registration, then segmentation with the engine.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import cc3d
import numpy as np
import SimpleITK as sitk

from lesions.deferred_prompts import resolve_stored_prompts
from lesions.dicom_seg import derived_seg_uids, write_dicom_seg
from lesions.dicomweb_reference import REFERENCE_KIND
from lesions.errors import EngineUnavailable, InputError
from lesions.geometry import ImageGeometry, check_same_grid
from lesions.image_inputs import LoadedImage, load_image_input
from lesions.image_io import read_label_volume, write_label_map
from lesions.label_map import compose_instances
from lesions.lesion_table import lesions_to_csv, lesions_to_json
from lesions.measurements import LesionMeasurement, measure_lesions
from lesions.preview import render_preview
from lesions.prompt_types import prompt_from_dict
from lesions.tracking_report import UNKNOWN_STATUSES, build_correspondence, correspondence_to_csv, stitch_previews
from worker.dicomweb_steps import request_field, retrieve_if_referenced, store_artifact
from worker.engines.base import Engine, EngineOptions, Tracker, model_tracker_of
from worker.segmentation_job import JobContext, describe_artifacts, finish_succeeded
from worker.tracking.classical_tracker import LesionTrack, track_lesions
from worker.tracking.registration import RegistrationError
from worker.tracking.unseen_lesions import SeenAt, track_unseen

logger = logging.getLogger(__name__)


@dataclass
class TimePoint:
    """One image of the series, its label map and how each lesion got there."""

    loaded: LoadedImage
    labels: np.ndarray
    tracks: dict[int, LesionTrack] = field(default_factory=dict)
    new_ids: list[int] = field(default_factory=list)
    measurements: list[LesionMeasurement] = field(default_factory=list)
    # From this image's points to the previous time point's; None for the baseline
    # and for a tracking model, which registers on its own grid.
    transform: sitk.Transform | None = None
    # {lesion id: index of the time point where it was last seen} for lesions that
    # this image did not show (outside its field of view, or not found).
    last_seen: dict[int, int] = field(default_factory=dict)


def run_tracking(context: JobContext) -> None:
    runtime, options = context.runtime, context.record.options
    inputs = runtime.store.inputs_dir(context.job_id)
    engine = runtime.engines.get(context.record.engine)
    engine_options = EngineOptions(test_time_augmentation=options.get("test_time_augmentation"))

    baseline_options = retrieve_if_referenced(context, inputs, options["baseline"], "baseline", 0.01)
    followup_options = []
    for position, entry in enumerate(options["followups"]):
        followup_options.append(retrieve_if_referenced(context, inputs, entry["image"], f"followup_{position + 1}", 0.01))

    started = context.enter_stage("loading", 0.02)
    baseline = load_image_input(inputs, baseline_options, request_field(options["baseline"], "baseline", "baseline_reference"))
    followups = []
    for position, (entry, image_options) in enumerate(zip(options["followups"], followup_options)):
        field = request_field(entry["image"], f"followups[{position}]", f"followup_references[{position}]")
        followups.append(load_image_input(inputs, image_options, field))
    _resolve_prompts(inputs, options, baseline, followups)
    context.stage_done("loading", started, baseline_size=list(baseline.image.GetSize()), followups=len(followups))

    started = context.enter_stage("segmenting", 0.05)
    labels, sources = baseline_labels(inputs, options, baseline.image, engine, engine_options)
    context.stage_done("segmenting", started, lesions=len(sources))

    job_warnings: list[str] = []
    tracker = tracking_model(context, engine, job_warnings)
    timepoints = [TimePoint(loaded=baseline, labels=labels)]
    for position, followup in enumerate(followups):
        started = context.enter_stage("tracking", 0.1 + 0.7 * position / len(followups))
        timepoint = track_into(timepoints, followup, engine, tracker, engine_options)
        prompts_file = options["followups"][position]["prompts_file"]
        if prompts_file:
            add_new_lesions(timepoint, inputs / prompts_file, engine, engine_options, sources, first_id=max(sources, default=0) + 1)
        timepoints.append(timepoint)
        context.stage_done("tracking", started, timepoint=position + 1, lesions=len(timepoint.tracks), new=len(timepoint.new_ids))

    started = context.enter_stage("measuring", 0.85)
    for timepoint in timepoints:
        timepoint.measurements = measure_lesions(timepoint.loaded.image, timepoint.labels, sources)
    context.stage_done("measuring", started, timepoints=len(timepoints))

    started = context.enter_stage("exporting", 0.92)
    export_tracking(context, timepoints, sources)
    artifacts = describe_artifacts(context)
    context.stage_done("exporting", started, artifacts=len(artifacts))

    if options.get("store_seg"):
        for index, image_options in enumerate([options["baseline"], *(entry["image"] for entry in options["followups"])]):
            if image_options["kind"] == REFERENCE_KIND:
                store_artifact(context, f"seg_t{index}.dcm", image_options["server"], 0.95)

    warnings = job_warnings + [f"follow-up {i}: {w}" for i, t in enumerate(timepoints[1:], start=1) for w in t.loaded.warnings]
    finish_succeeded(context, artifacts, warnings)


def _resolve_prompts(inputs, options: dict, baseline: LoadedImage, followups: list[LoadedImage]) -> None:
    """Resolve prompts that the gateway stored unresolved, because their image was a DICOMweb reference."""
    if options["prompts_file"]:
        resolve_stored_prompts(inputs / options["prompts_file"], ImageGeometry.of(baseline.image), "prompts")
    for position, (entry, followup) in enumerate(zip(options["followups"], followups)):
        if entry["prompts_file"]:
            resolve_stored_prompts(inputs / entry["prompts_file"], ImageGeometry.of(followup.image), f"followup_prompts[{position}]")


def tracking_model(context: JobContext, engine: Engine, job_warnings: list[str]) -> Tracker | None:
    """Return the engine's tracking model, or None for the classical tracker.

    A tracking model that exists but does not load falls back to the classical
    tracker with a job warning, because segmentation with the engine still works.
    """
    try:
        tracker = model_tracker_of(engine)
    except EngineUnavailable as error:
        logger.error("job %s: the tracking model of engine %s is unavailable, tracking classically: %s", context.job_id, engine.name, error)
        job_warnings.append(f"the tracking model of engine {engine.name} is unavailable, so lesions were tracked classically: {error}")
        return None
    logger.info("job %s: tracking with %s", context.job_id, "the engine's tracking model" if tracker else "the classical tracker")
    return tracker


def baseline_labels(inputs, options, image: sitk.Image, engine: Engine, engine_options: EngineOptions) -> tuple[np.ndarray, dict[int, str]]:
    """Return the baseline label map and {lesion id: where it came from}."""
    shape = sitk.GetArrayViewFromImage(image).shape
    if options["prompts_file"]:
        document = json.loads((inputs / options["prompts_file"]).read_text())
        prompts = [prompt_from_dict(entry) for entry in document["lesions"]]
        masks = engine.segment(image, prompts, engine_options)
        labels, _ = compose_instances(masks, shape)
        return labels, {prompt.lesion_id: prompt.describe() for prompt in prompts}

    mask_image = read_label_volume(inputs / options["mask_file"], "baseline_mask")
    check_same_grid(ImageGeometry.of(mask_image), ImageGeometry.of(image), "baseline_mask", "baseline")
    mask = sitk.GetArrayFromImage(mask_image)
    ids = [int(v) for v in np.unique(mask) if v != 0]
    if ids == [1]:
        # A binary mask: every connected component is one lesion.
        mask = cc3d.connected_components(mask > 0, connectivity=26).astype(np.uint16)
        ids = [int(v) for v in np.unique(mask) if v != 0]
        return mask, {lesion_id: "baseline mask component" for lesion_id in ids}
    return mask.astype(np.uint16), {lesion_id: "baseline mask label" for lesion_id in ids}


def track_into(timepoints: list[TimePoint], followup: LoadedImage, engine: Engine, tracker: Tracker | None, engine_options: EngineOptions) -> TimePoint:
    """Track the lesions of the last time point into ``followup``, and those that the
    last time point did not show from where they were last seen (classical tracker only)."""
    previous = timepoints[-1]
    if tracker is not None:
        result = tracker.track(previous.loaded.image, previous.labels, followup.image, engine_options)
        return TimePoint(loaded=followup, labels=result.followup_labels.astype(np.uint16), tracks=result.lesions)

    try:
        result = track_lesions(previous.loaded.image, previous.labels, followup.image, engine, options=engine_options)
    except RegistrationError as error:
        field = f"followups[{len(timepoints) - 1}]"
        raise InputError(field, f"could not be registered to the time point before it ({error}); check that both show the same patient and body region", code="registration_failed") from error
    timepoint = TimePoint(loaded=followup, labels=result.followup_labels.astype(np.uint16), tracks=dict(result.lesions), transform=result.transform)

    if previous.last_seen:
        series = [SeenAt(point.loaded.image, point.labels, point.transform) for point in timepoints]
        tracks, masks = track_unseen(series, previous.last_seen, followup.image, result.transform, engine, engine_options)
        timepoint.tracks.update(tracks)
        for lesion_id, mask in masks.items():
            timepoint.labels[mask & (timepoint.labels == 0)] = lesion_id

    unseen = [lesion_id for lesion_id, track in timepoint.tracks.items() if track.status in UNKNOWN_STATUSES]
    timepoint.last_seen = {lesion_id: previous.last_seen.get(lesion_id, len(timepoints) - 1) for lesion_id in unseen}
    return timepoint


def add_new_lesions(timepoint: TimePoint, prompts_path, engine: Engine, engine_options: EngineOptions, sources: dict[int, str], first_id: int) -> None:
    """Segment the lesions clicked in a follow-up; those not already tracked become new lesions."""
    document = json.loads(prompts_path.read_text())
    prompts = [prompt_from_dict(entry) for entry in document["lesions"]]
    masks = engine.segment(timepoint.loaded.image, prompts, engine_options)

    next_id = first_id
    for prompt in prompts:
        mask = masks.get(prompt.lesion_id)
        if mask is None or not mask.any():
            continue
        tracked = timepoint.labels[mask]
        # A click on a lesion that is already tracked marks that lesion, not a new one.
        if np.count_nonzero(tracked) >= 0.1 * mask.sum():
            continue
        timepoint.labels[mask & (timepoint.labels == 0)] = next_id
        timepoint.new_ids.append(next_id)
        sources[next_id] = f"new at follow-up ({prompt.describe()})"
        next_id += 1


def export_tracking(context: JobContext, timepoints: list[TimePoint], sources: dict[int, str]) -> None:
    store, job_id = context.runtime.store, context.job_id
    previews = []

    correspondence = build_correspondence(
        [t.measurements for t in timepoints],
        [{lesion_id: (track.status, track.note, track.warped_volume_ml, track.fraction_inside_field_of_view) for lesion_id, track in t.tracks.items()} for t in timepoints[1:]],
        [t.new_ids for t in timepoints[1:]],
        slice_thickness_mm=timepoints[0].loaded.image.GetSpacing()[2],
    )
    statuses = [{}] + [{row["lesion_id"]: row["status"] for row in followup["lesions"]} for followup in correspondence["followups"]]

    for index, timepoint in enumerate(timepoints):
        image = timepoint.loaded.image
        with store.staged_artifact(job_id, f"mask_t{index}.nii.gz") as path:
            write_label_map(timepoint.labels, image, path)
        table = lesions_to_json(timepoint.measurements, extra={"job_id": job_id, "timepoint": index, "engine": context.record.engine})
        store.write_artifact(job_id, f"lesions_t{index}.json", json.dumps(table, indent=2).encode())
        store.write_artifact(job_id, f"lesions_t{index}.csv", lesions_to_csv(timepoint.measurements).encode())
        preview = render_preview(image, timepoint.labels, timepoint.measurements, title=f"t{index}", statuses=statuses[index])
        store.write_artifact(job_id, f"preview_t{index}.png", preview)
        previews.append(preview)
        if timepoint.loaded.dicom is not None:
            with store.staged_artifact(job_id, f"seg_t{index}.dcm") as path:
                write_dicom_seg(timepoint.labels, timepoint.loaded.dicom, sorted(sources), path, uids=derived_seg_uids(job_id, f"seg_t{index}.dcm"))

    store.write_artifact(job_id, "correspondence.json", json.dumps(correspondence, indent=2).encode())
    store.write_artifact(job_id, "correspondence.csv", correspondence_to_csv(correspondence).encode())
    store.write_artifact(job_id, "preview.png", stitch_previews(previews))
