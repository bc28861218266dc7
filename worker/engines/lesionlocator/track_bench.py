"""Time the LesionLocatorTrack tracker on the reference fixture pair, for ``make bench``.

The workload is the official 5-lesion tracking run: the example CT with its
instance mask as the previous time point, the synthetic follow-up, fold 0 of
the tiny random-weight checkpoint (with the full-size uniGradICON), no
mirroring, CPU. The official code took 212 s wall time for it (2-core AMD
EPYC, torch 2.13), because it registers the pair again for every lesion.
Here the pair is registered once, so the time is one registration plus a
U-Net patch per lesion.

``checkpoint_dir`` must contain ``LesionLocatorTrack`` with the decompressed
``checkpoint_final.pth`` (the fixtures ship it as ``.xz``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from worker.engines.base import EngineOptions

from .engine import LesionLocatorEngine

REFERENCE_RUN = "track_prev_mask_5lesions_notta_fp32driver"
ONE_LESION_ID = 2


def run_tracking_benchmark(reference_dir: Path, checkpoint_dir: Path) -> dict:
    """Time loading, one lesion and five lesions, and compare with the official 5-lesion run."""
    inputs = reference_dir / "inputs"
    baseline = sitk.ReadImage(str(inputs / "images" / "example_ct.nii.gz"), sitk.sitkFloat32)
    followup = sitk.ReadImage(str(inputs / "images" / "example_ct_fu.nii.gz"), sitk.sitkFloat32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "prompts" / "instance_mask" / "example_ct.nii.gz")))
    options = EngineOptions(test_time_augmentation=False)

    started = time.perf_counter()
    tracker = LesionLocatorEngine(checkpoint_dir, folds=(0,), device="cpu").model_tracker()
    if tracker is None:
        return {"skipped": f"{checkpoint_dir} has no LesionLocatorTrack folder"}
    load_s = time.perf_counter() - started

    one_lesion = _timed_run(tracker, baseline, np.where(labels == ONE_LESION_ID, labels, 0), followup, options)
    five_lesions = _timed_run(tracker, baseline, labels, followup, options)

    reference_s = json.loads((reference_dir / "timings.json").read_text())["runs"][REFERENCE_RUN]["wall_seconds"]
    return {
        "workload": "example_ct -> example_ct_fu, instance mask prompts, fold 0, no TTA, CPU",
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "load_s": round(load_s, 2),
        "one_lesion": one_lesion,
        "five_lesions": five_lesions,
        "reference_five_lesions_s": reference_s,
        "reference_over_five_lesions": round(reference_s / five_lesions["wall_s"], 2),
        "target_five_lesions_s": round(reference_s / 3, 1),
        "note": "the reference time is the official in-process driver's, including its own preprocessing and export",
    }


def _timed_run(tracker, baseline: sitk.Image, labels: np.ndarray, followup: sitk.Image, options: EngineOptions) -> dict:
    started, started_cpu = time.perf_counter(), time.process_time()
    run = tracker.run(baseline, labels, followup, options)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - started_cpu

    lesions = len(run.result.lesions)
    return {
        "lesions": lesions,
        "wall_s": round(wall_s, 2),
        "cpu_s": round(cpu_s, 2),
        "preprocessing_s": round(run.preprocess_seconds, 2),
        "registration_s_per_followup": round(run.registration_seconds, 2),
        "unet_s_per_lesion": round(run.lesion_seconds / max(1, lesions), 2),
        "export_s": round(wall_s - run.preprocess_seconds - run.registration_seconds - run.lesion_seconds, 2),
        "statuses": {str(lesion_id): track.status for lesion_id, track in run.result.lesions.items()},
    }
