"""Time the lesionlocator engine on the reference fixture CT, for ``make bench``.

The workload is the official no-TTA box run: the 112x101x122 example CT with
its 5 box prompts (99 patches of 64x96x96), fold 0 of the tiny random-weight
checkpoint, on CPU. The official CLI took 82 s wall time for it (2-core AMD
EPYC, torch 2.13), including about 25-30 s of process start, worker pools and
file export that this in-process timing does not have.

Run directly with ``python -m worker.engines.lesionlocator.bench``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from lesions.prompt_types import LesionPrompt
from worker.engines.base import EngineOptions

from .engine import LesionLocatorEngine

REFERENCE_SUBDIR = Path("fixtures") / "lesionlocator-reference"
REFERENCE_RUN = "seg_box_json_notta"


def reference_dir() -> Path:
    """Return the reference fixture folder under ``$TUMORTRACK_SHARED_DIR`` or ../shared next to the repository."""
    shared = os.environ.get("TUMORTRACK_SHARED_DIR")
    shared_dir = Path(shared) if shared else Path(__file__).resolve().parents[3].parent / "shared"
    return shared_dir / REFERENCE_SUBDIR


def run_fixture_benchmark() -> dict:
    """Time one cold call (weights loaded inside) and one warm call, and compare them with the official run."""
    root = reference_dir()
    if not root.is_dir():
        return {"skipped": f"{root} is absent: the benchmark needs the LesionLocator reference fixtures"}

    image = sitk.ReadImage(str(root / "inputs" / "images" / "example_ct.nii.gz"), sitk.sitkFloat32)
    prompts = _box_prompts(root / "inputs" / "prompts" / "boxes" / "example_ct.json")
    options = EngineOptions(test_time_augmentation=False)
    checkpoint = root / "checkpoints" / "tiny" / "LesionLocatorCheckpoint"

    # CPU time (user + system, all threads) varies less than wall time when other
    # processes share the machine.
    started, started_cpu = time.perf_counter(), time.process_time()
    engine = LesionLocatorEngine(checkpoint, folds=(0,), device="cpu")
    engine.load()
    load_s = time.perf_counter() - started
    engine.segment(image, prompts, options)
    cold_s, cold_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu

    started, started_cpu = time.perf_counter(), time.process_time()
    masks = engine.segment(image, prompts, options)
    warm_s, warm_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu

    reference = _reference_timing(root)
    return {
        "workload": "example_ct, 5 box prompts (99 patches), fold 0, no TTA, CPU",
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "load_s": round(load_s, 2),
        "cold_s": round(cold_s, 2),
        "warm_s": round(warm_s, 2),
        "cold_cpu_s": round(cold_cpu_s, 2),
        "warm_cpu_s": round(warm_cpu_s, 2),
        "reference_s": reference["wall_seconds"],
        "reference_cpu_s": round(reference["user_seconds"] + reference["system_seconds"], 2),
        "cold_s_per_lesion": round(cold_s / 5, 2),
        "warm_s_per_lesion": round(warm_s / 5, 2),
        "reference_s_per_lesion": round(reference["wall_seconds"] / 5, 2),
        "reference_over_cold": round(reference["wall_seconds"] / cold_s, 2),
        "reference_over_warm": round(reference["wall_seconds"] / warm_s, 2),
        "dice_vs_reference": _dice_per_lesion(root, masks),
        "note": "the reference times are the official CLI's, including process start, worker pools and file export",
    }


def _box_prompts(path: Path) -> list[LesionPrompt]:
    prompts = []
    for key, value in json.loads(path.read_text()).items():
        z0, z1, y0, y1, x0, x1 = (int(float(v)) for v in value["box"])
        prompts.append(LesionPrompt(int(key), "box", box_min=(x0, y0, z0), box_max=(x1, y1, z1)))
    return prompts


def _reference_timing(root: Path) -> dict:
    timings = json.loads((root / "timings.json").read_text())
    return timings["runs"][REFERENCE_RUN]


def _dice_per_lesion(root: Path, masks: dict[int, np.ndarray]) -> dict[str, float]:
    scores = {}
    for lesion_id, mask in sorted(masks.items()):
        official_path = root / "outputs" / REFERENCE_RUN / f"example_ct_lesion_{lesion_id}.nii.gz"
        official = sitk.GetArrayFromImage(sitk.ReadImage(str(official_path))) > 0
        total = int(mask.sum()) + int(official.sum())
        scores[str(lesion_id)] = round(2.0 * int((mask & official).sum()) / total, 4) if total else 1.0
    return scores


if __name__ == "__main__":
    print(json.dumps(run_fixture_benchmark(), indent=2))
