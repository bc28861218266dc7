"""`make demo`: start the stack, segment the lesions of one CT over HTTP, print the
lesion table and where the files are, then shut everything down.

Without --image/--prompts it runs on a real CT from ../shared/data when that
folder exists, else on a synthetic phantom, and prints which.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import SimpleITK as sitk

from ops.cases import REPO_ROOT, DemoCase, TrackingCase, phantom_case, real_case, tracking_case
from ops.stack import start_stack

OUTPUT_DIR = REPO_ROOT / "demo-output"
TABLE_COLUMNS = [("id", "id"), ("volume_ml", "volume ml"), ("long_axis_mm", "long axis mm"), ("short_axis_mm", "short axis mm"), ("max_diameter_3d_mm", "3D max mm"), ("intensity_mean_hu", "mean HU")]


def main() -> int:
    arguments = _parse_arguments()
    OUTPUT_DIR.mkdir(exist_ok=True)
    case = _choose_case(arguments)
    print(f"case: {case.name}\nimage: {case.image}\nprompts: {case.prompts}")
    tracking = None if arguments.image else tracking_case(REPO_ROOT / "var" / "demo-inputs", case)

    redis_url = os.environ.get("TUMORTRACK_REDIS_URL")
    print("starting redis (embedded)" if redis_url is None else f"using redis at {redis_url}", "+ worker + gateway ...", flush=True)
    stack = start_stack(store_dir=REPO_ROOT / "var" / "demo-store", log_dir=REPO_ROOT / "var" / "demo-logs", redis_url=redis_url)
    try:
        status = _run(stack.base_url, case)
        if status == 0 and tracking is not None:
            status = _run_tracking(stack.base_url, tracking)
        return status
    finally:
        stack.stop()
        print("stack stopped")


def _run(base_url: str, case: DemoCase) -> int:
    client = httpx.Client(base_url=base_url, timeout=60)
    started = time.perf_counter()
    with open(case.image, "rb") as image, open(case.prompts, "rb") as prompts:
        response = client.post("/v1/segmentations", files={"image": (case.image.name, image), "prompts": ("prompts.json", prompts, "application/json")})
    if response.status_code != 202:
        print(f"submission rejected: HTTP {response.status_code} {response.text}", file=sys.stderr)
        return 1

    job = _wait_for_job(client, response.headers["Location"])
    elapsed = time.perf_counter() - started
    if job["state"] != "succeeded":
        print(f"job {job['id']} {job['state']}: {job.get('error')}", file=sys.stderr)
        return 1

    paths = _download_artifacts(client, job)
    print(f"\njob {job['id']} succeeded in {elapsed:.1f} s with engine '{job['engine']}'\n")
    _print_table(paths["lesions.csv"].read_text())
    _print_dice(case, paths["mask.nii.gz"])
    print("\nfiles:")
    for name, path in paths.items():
        print(f"  {name:14s} {path}")
    return 0


def _run_tracking(base_url: str, case: TrackingCase) -> int:
    print(f"\n--- tracking ---\ncase: {case.name}\nbaseline: {case.baseline}\nfollow-up: {case.followup}\nbaseline mask: {case.baseline_mask}")
    client = httpx.Client(base_url=base_url, timeout=60)
    started = time.perf_counter()
    files = [
        ("baseline", (case.baseline.name, case.baseline.read_bytes())),
        ("followups", (case.followup.name, case.followup.read_bytes())),
        ("baseline_mask", (case.baseline_mask.name, case.baseline_mask.read_bytes())),
    ]
    response = client.post("/v1/trackings", files=files)
    if response.status_code != 202:
        print(f"tracking rejected: HTTP {response.status_code} {response.text}", file=sys.stderr)
        return 1

    job = _wait_for_job(client, response.headers["Location"])
    if job["state"] != "succeeded":
        print(f"job {job['id']} {job['state']}: {job.get('error')}", file=sys.stderr)
        return 1

    paths = _download_artifacts(client, job)
    print(f"\njob {job['id']} succeeded in {time.perf_counter() - started:.1f} s\n")
    _print_correspondence(json.loads(paths["correspondence.json"].read_text()))
    print("note: 'ml carried' is the previous mask moved onto the follow-up by the registration, i.e. the volume if nothing changed;")
    print("      the organs did not change, so 'change %' shows the tracker's own error (README, Known limits)")
    print("\nfiles:")
    for name, path in paths.items():
        print(f"  {name:22s} {path}")
    return 0


def _print_correspondence(document: dict) -> None:
    columns = [("lesion_id", "id"), ("status", "status"), ("previous_volume_ml", "ml before"), ("carried_volume_ml", "ml carried"), ("volume_ml", "ml after"), ("volume_change_percent", "change %"), ("previous_long_axis_mm", "LA before"), ("long_axis_mm", "LA after")]
    for followup in document["followups"]:
        print(f"follow-up t{followup['timepoint']}:")
        print("  ".join(f"{title:>11s}" for _, title in columns))
        for row in followup["lesions"]:
            print("  ".join(f"{_format_value(row[key]):>11s}" for key, _ in columns))
        recist = followup["recist"]
        print(f"RECIST 1.1: {recist['response']} ({recist['reason']}); target lesions {document['target_lesions']}")


def _format_value(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def _wait_for_job(client: httpx.Client, location: str, timeout_s: float = 600) -> dict:
    deadline = time.monotonic() + timeout_s
    last_stage = None
    while time.monotonic() < deadline:
        job = client.get(location).json()
        if job["stage"] != last_stage and job["stage"]:
            print(f"  {job['state']}: {job['stage']} ({job['progress']:.0%})", flush=True)
            last_stage = job["stage"]
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job did not finish within {timeout_s:.0f} s")


def _download_artifacts(client: httpx.Client, job: dict) -> dict[str, Path]:
    folder = OUTPUT_DIR / job["id"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for artifact in job["artifacts"]:
        path = folder / artifact["name"]
        path.write_bytes(client.get(artifact["url"]).content)
        paths[artifact["name"]] = path
    return paths


def _print_table(csv_text: str) -> None:
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    print("  ".join(f"{title:>13s}" for _, title in TABLE_COLUMNS) + "  prompt")
    for row in rows:
        cells = [_format_cell(row.get(column, "")) for column, _ in TABLE_COLUMNS]
        print("  ".join(f"{cell:>13s}" for cell in cells) + f"  {row.get('prompt', '')}")


def _format_cell(value: str) -> str:
    try:
        return f"{float(value):.1f}" if "." in value else value
    except ValueError:
        return value or "-"


def _print_dice(case: DemoCase, mask_path: Path) -> None:
    if case.truth is None:
        return
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.truth))) > 0
    dice = 2 * np.logical_and(predicted, truth).sum() / max(predicted.sum() + truth.sum(), 1)
    print(f"\nDice against the ground-truth mask: {dice:.3f}")


def _choose_case(arguments) -> DemoCase:
    if arguments.image or arguments.prompts:
        if not (arguments.image and arguments.prompts):
            sys.exit("give both IMAGE and PROMPTS, or neither")
        return DemoCase("your files", Path(arguments.image).resolve(), Path(arguments.prompts).resolve(), None, synthetic=False)
    workdir = REPO_ROOT / "var" / "demo-inputs"
    workdir.mkdir(parents=True, exist_ok=True)
    case = real_case(workdir)
    if case is None:
        print("../shared/data is absent: using a SYNTHETIC phantom, not a real scan")
        case = phantom_case(workdir)
    return case


def _parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", help="CT volume (.nii.gz, .nii, .nrrd, .mha)")
    parser.add_argument("--prompts", help="prompt JSON file")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
