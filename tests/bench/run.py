"""`make bench`: measure in one run, side by side, and write bench-report.json.

- request overhead: end-to-end job time (POST to succeeded, over HTTP with a
  real worker) divided by the engine's own time on the same input;
- worker peak memory divided by the input's in-memory size (float32 voxels);
- the classical engine's Dice per case with box and point prompts;
- the lesionlocator engine on the fixture CT against the reference's time;
- the LesionLocatorTrack tracker on the fixture pair (1 and 5 lesions) against
  the reference's 212 s for 5 lesions;
- the classical tracker on the same pair: registration per follow-up and time
  per lesion, for 1 and 5 lesions.

Numbers come from this machine at this moment; ratios are what to compare
across runs, since absolute times vary with load.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import SimpleITK as sitk

from ops.cases import box_prompts_from_mask
from ops.stack import REPO_ROOT, start_stack
from tests.lesion_cases import box_prompt, dice, inscribed_ellipsoid, load_ct_lesion_cases, point_prompt, shared_data_dir

REPORT_PATH = REPO_ROOT / "bench-report.json"
REQUEST_REPEATS = 3


def main() -> int:
    report = {"machine": {"platform": platform.platform(), "cpus": psutil.cpu_count(), "python": platform.python_version()}}
    data = shared_data_dir()
    if not data.exists():
        print(f"{data} is absent: the benchmark needs the shared test data", file=sys.stderr)
        return 1

    report["request_overhead"] = bench_request_overhead(data / "ibsi_sts_019")
    report["request_overhead_lesionlocator"] = bench_model_request_overhead()
    report["throughput"] = bench_throughput(data / "ibsi_sts_019")
    report["dicom_load"] = bench_dicom_load(data / "ibsi_sts_019")
    report["upload_memory"] = bench_upload_memory()
    report["classical_dice"] = bench_classical_dice(data)
    report["lesionlocator"] = bench_lesionlocator()
    report["lesionlocator_tracking"] = bench_lesionlocator_tracking()
    report["classical_tracking"] = bench_classical_tracking()

    REPORT_PATH.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"wrote {REPORT_PATH}")
    return 0


def bench_request_overhead(case_dir: Path) -> dict:
    image_path = case_dir / "ct_image.nii.gz"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "ct_mask.nii.gz")))
    prompts = json.dumps(box_prompts_from_mask(truth))
    input_bytes = int(np.prod(sitk.ReadImage(str(image_path)).GetSize())) * 4

    stack = start_stack(store_dir=REPO_ROOT / "var" / "bench-store", log_dir=REPO_ROOT / "var" / "bench-logs")
    sampler = PeakMemorySampler(stack.processes["worker"].pid)
    sampler.start()
    try:
        runs = [_timed_job(stack.base_url, image_path, prompts) for _ in range(REQUEST_REPEATS)]
    finally:
        sampler.stop()
        stack.stop()

    ratios = [run["end_to_end_s"] / run["engine_s"] for run in runs]
    return {
        "case": case_dir.name,
        "note_ratio": "the classical engine takes about 15 ms here, so the fixed cost of upload, queue, reading and export dominates the ratio; see request_overhead_lesionlocator for a job whose engine does real work",
        "runs": runs,
        "end_to_end_over_engine_median": round(statistics.median(ratios), 3),
        "target": "under 1.3",
        "worker_peak_rss_mb": round(sampler.peak_bytes / 2**20, 1),
        "input_float32_mb": round(input_bytes / 2**20, 2),
        "worker_peak_rss_over_input": round(sampler.peak_bytes / input_bytes, 1),
        "note": "peak RSS is that of the largest worker process, including the Python runtime and imported libraries",
    }


def bench_model_request_overhead() -> dict:
    """The same ratio where the engine does real work: the tiny lesionlocator checkpoint on the fixture CT."""
    fixtures = shared_data_dir().parent / "fixtures" / "lesionlocator-reference"
    if not fixtures.exists():
        return {"skipped": f"{fixtures} is absent"}
    image_path = fixtures / "inputs" / "images" / "example_ct.nii.gz"
    boxes = json.loads((fixtures / "inputs" / "prompts" / "boxes" / "example_ct.json").read_text())
    prompts = json.dumps({key: boxes[key] for key in ("1", "2", "5")})  # the three single-patch lesions
    env = {"TUMORTRACK_CHECKPOINT_DIR": str(fixtures / "checkpoints" / "tiny" / "LesionLocatorCheckpoint")}

    stack = start_stack(store_dir=REPO_ROOT / "var" / "bench-store", log_dir=REPO_ROOT / "var" / "bench-logs", extra_env=env)
    try:
        _wait_for_engine(stack.base_url, "lesionlocator")
        runs = [_timed_job(stack.base_url, image_path, prompts, engine="lesionlocator") for _ in range(REQUEST_REPEATS)]
    finally:
        stack.stop()

    ratios = [run["end_to_end_s"] / run["engine_s"] for run in runs]
    return {"case": "example_ct, 3 single-patch box prompts, tiny checkpoint, CPU", "runs": runs, "end_to_end_over_engine_median": round(statistics.median(ratios), 3), "target": "under 1.3"}


def _wait_for_engine(base_url: str, name: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        engines = httpx.get(f"{base_url}/v1/engines", timeout=10).json()["engines"]
        if any(engine["name"] == name and engine["ready"] for engine in engines):
            return
        time.sleep(0.5)
    raise TimeoutError(f"engine {name} not ready after {timeout_s} s")


def _timed_job(base_url: str, image_path: Path, prompts: str, engine: str = "classical") -> dict:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        started = time.perf_counter()
        with open(image_path, "rb") as handle:
            job_id = client.post("/v1/segmentations", files={"image": (image_path.name, handle)}, data={"prompts": prompts, "engine": engine}).json()["id"]
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
            time.sleep(0.05)
        end_to_end = time.perf_counter() - started
        if job["state"] != "succeeded":
            raise RuntimeError(f"benchmark job failed: {job['error']}")
        engine_seconds = client.get(f"/v1/jobs/{job_id}/artifacts/lesions.json").json()["engine_seconds"]
    return {"end_to_end_s": round(end_to_end, 3), "engine_s": engine_seconds}


def bench_throughput(case_dir: Path, jobs: int = 24, clients: int = 4) -> dict:
    """Sustained classical jobs per minute with two worker processes, and POST-to-succeeded latency."""
    from concurrent.futures import ThreadPoolExecutor

    image_path = case_dir / "ct_image.nii.gz"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "ct_mask.nii.gz")))
    prompts = json.dumps(box_prompts_from_mask(truth))

    stack = start_stack(store_dir=REPO_ROOT / "var" / "bench-store", log_dir=REPO_ROOT / "var" / "bench-logs", worker_concurrency=2)
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            latencies = [run["end_to_end_s"] for run in pool.map(lambda _: _timed_job(stack.base_url, image_path, prompts), range(jobs))]
        elapsed = time.perf_counter() - started
    finally:
        stack.stop()

    quantiles = statistics.quantiles(latencies, n=20)
    return {
        "jobs": jobs,
        "concurrent_clients": clients,
        "worker_processes": 2,
        "jobs_per_minute": round(jobs / elapsed * 60, 1),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(quantiles[18], 3),
    }


def bench_dicom_load(case_dir: Path, repeats: int = 3) -> dict:
    """Reading the DICOM series against reading its NIfTI twin, same volume."""
    from lesions.dicom_series import read_dicom_series

    files = sorted((case_dir / "dicom_ct" / "image").glob("*.dcm"))
    dicom_s = min(_seconds(lambda: read_dicom_series(files)) for _ in range(repeats))
    nifti_s = min(_seconds(lambda: sitk.ReadImage(str(case_dir / "ct_image.nii.gz"), sitk.sitkFloat32)) for _ in range(repeats))
    return {"slices": len(files), "dicom_s": round(dicom_s, 4), "nifti_s": round(nifti_s, 4), "dicom_over_nifti": round(dicom_s / nifti_s, 2)}


def bench_upload_memory(megabytes: int = int(os.environ.get("TUMORTRACK_BENCH_UPLOAD_MB", "1024"))) -> dict:
    """Peak resident memory of the gateway while it receives one large volume upload."""
    workdir = REPO_ROOT / "var" / "bench-upload"
    workdir.mkdir(parents=True, exist_ok=True)
    slices = max(2, megabytes * 2**20 // (512 * 512 * 4))
    path = workdir / "large.nii"
    _write_large_nifti(path, (512, 512, slices))

    stack = start_stack(store_dir=workdir / "store", log_dir=REPO_ROOT / "var" / "bench-logs")
    sampler = PeakMemorySampler(stack.processes["gateway"].pid)
    try:
        idle_bytes = psutil.Process(stack.processes["gateway"].pid).memory_info().rss
        sampler.start()
        prompts = json.dumps({"frame": "voxel", "lesions": [{"id": 1, "point": {"x": 256, "y": 256, "z": slices // 2}}]})
        with open(path, "rb") as handle:
            status = httpx.post(f"{stack.base_url}/v1/segmentations", files={"image": (path.name, handle)}, data={"prompts": prompts}, timeout=600).status_code
        sampler.stop()
    finally:
        stack.stop()
        path.unlink(missing_ok=True)

    return {
        "upload_mb": round(path_size_mb(slices), 1),
        "status": status,
        "gateway_idle_rss_mb": round(idle_bytes / 2**20, 1),
        "gateway_peak_rss_mb": round(sampler.peak_bytes / 2**20, 1),
        "peak_over_upload": round(sampler.peak_bytes / (path_size_mb(slices) * 2**20), 3),
    }


def path_size_mb(slices: int) -> float:
    return 512 * 512 * slices * 4 / 2**20


def _write_large_nifti(path: Path, size_xyz: tuple[int, int, int]) -> None:
    # Written slab by slab after the header of a small image, so the benchmark
    # never keeps the whole volume in memory.
    header_image = sitk.Image([size_xyz[0], size_xyz[1], 1], sitk.sitkFloat32)
    small = path.with_suffix(".header.nii")
    sitk.WriteImage(header_image, str(small))
    header = bytearray(small.read_bytes()[:352])
    small.unlink()
    import struct

    struct.pack_into("<hhhhhhhh", header, 40, 3, size_xyz[0], size_xyz[1], size_xyz[2], 1, 1, 1, 1)
    slab = np.zeros((size_xyz[1], size_xyz[0]), np.float32).tobytes()
    with open(path, "wb") as handle:
        handle.write(bytes(header))
        for _ in range(size_xyz[2]):
            handle.write(slab)


def _seconds(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bench_classical_dice(data: Path) -> dict:
    from worker.engines.base import EngineOptions
    from worker.engines.classical import ClassicalEngine

    engine = ClassicalEngine()
    rows = []
    for case in load_ct_lesion_cases(data):
        spacing = case.image.GetSpacing()
        for number, truth in enumerate(case.lesion_masks, start=1):
            row = {"case": case.name, "lesion": number}
            for kind, prompt in (("box", box_prompt(number, truth)), ("point", point_prompt(number, truth, spacing))):
                started = time.perf_counter()
                mask = engine.segment(case.image, [prompt], EngineOptions())[number]
                row[f"{kind}_dice"] = round(dice(mask, truth), 3)
                row[f"{kind}_seconds"] = round(time.perf_counter() - started, 2)
            row["ellipsoid_dice"] = round(dice(inscribed_ellipsoid(truth.shape, box_prompt(number, truth)), truth), 3)
            rows.append(row)

    summary = {f"{key}_mean": round(statistics.mean(r[key] for r in rows), 3) for key in ("box_dice", "point_dice", "ellipsoid_dice")}
    summary["point_dice_median"] = round(statistics.median(r["point_dice"] for r in rows), 3)
    return {"lesions": rows, **summary}


def bench_lesionlocator() -> dict:
    try:
        from worker.engines.lesionlocator.bench import run_fixture_benchmark
    except ImportError as error:
        return {"skipped": f"lesionlocator benchmark unavailable: {error}"}
    return run_fixture_benchmark()


def bench_lesionlocator_tracking() -> dict:
    fixtures = shared_data_dir().parent / "fixtures" / "lesionlocator-reference"
    if not fixtures.is_dir():
        return {"skipped": f"{fixtures} is absent: the benchmark needs the LesionLocator reference fixtures"}
    try:
        from worker.engines.lesionlocator.track_bench import run_tracking_benchmark
    except ImportError as error:
        return {"skipped": f"lesionlocator tracking benchmark unavailable: {error}"}

    from tests.parity.reference_data import track_checkpoint_dir

    return run_tracking_benchmark(fixtures, track_checkpoint_dir(fixtures))


def bench_classical_tracking() -> dict:
    from worker.engines.classical import ClassicalEngine
    from worker.tracking.classical_tracker import track_lesions
    from worker.tracking.registration import register

    inputs = shared_data_dir().parent / "fixtures" / "lesionlocator-reference" / "inputs"
    if not inputs.is_dir():
        return {"skipped": f"{inputs} is absent: the benchmark needs the LesionLocator reference fixtures"}
    baseline = sitk.ReadImage(str(inputs / "images" / "example_ct.nii.gz"), sitk.sitkFloat32)
    followup = sitk.ReadImage(str(inputs / "images" / "example_ct_fu.nii.gz"), sitk.sitkFloat32)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(inputs / "prompts" / "instance_mask" / "example_ct.nii.gz")))

    started = time.perf_counter()
    transform = register(followup, baseline)
    registration_s = time.perf_counter() - started

    # The first call pays for lazy imports and caches, so it is not timed.
    track_lesions(baseline, np.where(labels == 2, labels, 0), followup, ClassicalEngine(), transform=transform)
    per_lesion = {}
    for name, lesion_labels in (("one_lesion", np.where(labels == 2, labels, 0)), ("five_lesions", labels)):
        started = time.perf_counter()
        result = track_lesions(baseline, lesion_labels, followup, ClassicalEngine(), transform=transform)
        seconds = time.perf_counter() - started
        per_lesion[name] = {"lesions": len(result.lesions), "wall_s_after_registration": round(seconds, 2), "s_per_lesion": round(seconds / len(result.lesions), 2)}

    return {"workload": "example_ct -> example_ct_fu, instance mask, classical engine", "registration_s_per_followup": round(registration_s, 2), **per_lesion}


class PeakMemorySampler:
    """Sample the resident memory of a process tree every 50 ms and keep the largest single process."""

    def __init__(self, root_pid: int):
        self.root = psutil.Process(root_pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for process in [self.root, *self.root.children(recursive=True)]:
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            except psutil.Error:
                pass
            self._stop.wait(0.05)


if __name__ == "__main__":
    sys.exit(main())
