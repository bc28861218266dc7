"""The ``tumortrack`` command line against the live stack: a 20-case batch killed
half way and resumed, and one ``segment`` and one ``track`` run end to end.

The CLI runs as a subprocess against a gateway with an API key of its own
tenant, on the session's Redis prefix and queue, so the jobs the batch created
are exactly the job records of that tenant.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
import SimpleITK as sitk

from ops.cases import box_prompts_from_mask
from ops.stack import REPO_ROOT, free_port
from tests.conftest import require_shared

pytestmark = pytest.mark.integration

STS_CASES = ("ibsi_sts_001", "ibsi_sts_002", "ibsi_sts_008", "ibsi_sts_012", "ibsi_sts_019")
BATCH_SIZE = 20
KILL_AFTER_DONE = BATCH_SIZE // 2
# A wrong geometry or label would drop Dice near 0; the engine's accuracy is scored in tests/quality.
MIN_CASE_DICE = 0.6
CLI_TIMEOUT_S = 600
ARTIFACTS = {"mask.nii.gz", "lesions.json", "lesions.csv", "preview.png"}


@pytest.fixture(scope="module")
def tenant_gateway(stack):
    """Start a gateway with one API key, for a tenant that no other test uses."""
    tenant, key = f"cli-{uuid.uuid4().hex[:8]}", f"key-{uuid.uuid4().hex}"
    port = free_port()
    stack.start_gateway(port, extra_env={"TUMORTRACK_API_KEYS": f"{tenant}={key}"}, name="cli-gateway")
    base_url = f"http://127.0.0.1:{port}"
    stack.wait_http(base_url)
    yield {"url": base_url, "tenant": tenant, "key": key, "redis": redis.Redis.from_url(stack.redis_url), "prefix": stack.extra_env["TUMORTRACK_KEY_PREFIX"]}
    stack.stop_process("cli-gateway")


def tenant_job_ids(gateway) -> list[str]:
    """Return the ids of every job record in Redis that belongs to the gateway's tenant."""
    ids = []
    for key in gateway["redis"].scan_iter(match=f"{gateway['prefix']}:job:*", count=500):
        raw = gateway["redis"].get(key)
        if raw is not None and json.loads(raw)["tenant"] == gateway["tenant"]:
            ids.append(json.loads(raw)["id"])
    return ids


def cli(gateway, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "tumortrack_client.cli", *arguments, "--url", gateway["url"]]


def cli_env(gateway) -> dict:
    env = {**os.environ, "TUMORTRACK_API_KEY": gateway["key"], "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_cli(gateway, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(gateway, *arguments), env=cli_env(gateway), capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def sts_manifest(tmp_path_factory):
    """A 20-row manifest cycling over the five sarcoma CTs, box prompts from their masks, and the truth per case."""
    data = require_shared("data")
    folder = tmp_path_factory.mktemp("manifest")
    truths = {}
    for name in STS_CASES:
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(data / name / "ct_mask.nii.gz"))) > 0
        (folder / f"{name}.json").write_text(json.dumps(box_prompts_from_mask(truth)))
        truths[name] = truth

    lines = ["case_id,kind,image,prompts,engine"]
    case_truth = {}
    for index in range(BATCH_SIZE):
        name = STS_CASES[index % len(STS_CASES)]
        case_id = f"case_{index:02d}"
        lines.append(f"{case_id},segment,{data / name / 'ct_image.nii.gz'},{name}.json,classical")
        case_truth[case_id] = truths[name]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, case_truth


def read_state(out_dir: Path) -> dict:
    path = out_dir / "batch-state.json"
    return json.loads(path.read_text())["cases"] if path.exists() else {}


def kill_batch_half_way(gateway, manifest: Path, out_dir: Path) -> dict:
    """Start the batch, SIGKILL it once half the cases are done, and return the state it left."""
    process = subprocess.Popen(cli(gateway, "batch", str(manifest), "--out", str(out_dir), "--concurrency", "2"), env=cli_env(gateway), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + CLI_TIMEOUT_S
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if sum(record["status"] == "done" for record in read_state(out_dir).values()) >= KILL_AFTER_DONE:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the batch ended on its own (exit {process.returncode}) before it could be killed"
    return read_state(out_dir)


def test_batch_killed_and_resumed(tenant_gateway, sts_manifest, tmp_path):
    manifest, truths = sts_manifest
    out_dir = tmp_path / "out"

    left = kill_batch_half_way(tenant_gateway, manifest, out_dir)
    done_before = {case_id: record["job_id"] for case_id, record in left.items() if record["status"] == "done"}
    assert KILL_AFTER_DONE <= len(done_before) < BATCH_SIZE

    rerun = run_cli(tenant_gateway, "batch", str(manifest), "--out", str(out_dir), "--concurrency", "4")
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {len(done_before)} of {BATCH_SIZE} cases finished in an earlier run" in rerun.stderr

    with open(out_dir / "summary.csv", newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert [row["case_id"] for row in summary] == [f"case_{i:02d}" for i in range(BATCH_SIZE)]
    assert {row["state"] for row in summary} == {"succeeded"}
    assert {row["lesion_count"] for row in summary} == {"1"}
    assert all(row["error"] == "" for row in summary)
    for case_id, job_id in done_before.items():
        assert next(row["job_id"] for row in summary if row["case_id"] == case_id) == job_id

    job_ids = tenant_job_ids(tenant_gateway)
    assert len(job_ids) == BATCH_SIZE
    assert sorted(job_ids) == sorted(row["job_id"] for row in summary)

    folders = sorted(path.name for path in out_dir.iterdir() if path.is_dir())
    assert folders == [f"case_{i:02d}" for i in range(BATCH_SIZE)]
    for row in summary:
        folder = out_dir / row["case_id"]
        assert ARTIFACTS <= {path.name for path in folder.iterdir()}
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "mask.nii.gz")))
        assert dice(mask == 1, truths[row["case_id"]]) >= MIN_CASE_DICE, row["case_id"]
        volume = json.loads((folder / "lesions.json").read_text())["lesions"][0]["volume_ml"]
        assert row["volumes_ml"] == f"1:{volume:.2f}"


def test_batch_resubmission_after_lost_state_replays_jobs(tenant_gateway, sts_manifest, tmp_path):
    """A kill between the service's 202 and the state write: the rerun's submission gets the same job back."""
    manifest, _ = sts_manifest
    small = manifest.parent / "replay.csv"
    small.write_text("\n".join(manifest.read_text().splitlines()[:4]) + "\n")
    out_dir = tmp_path / "out"
    jobs_before = len(tenant_job_ids(tenant_gateway))

    first = run_cli(tenant_gateway, "batch", str(small), "--out", str(out_dir), "--no-progress-bar")
    assert first.returncode == 0, first.stderr
    state_path = out_dir / "batch-state.json"
    document = json.loads(state_path.read_text())
    original = {case_id: record["job_id"] for case_id, record in document["cases"].items()}
    for record in document["cases"].values():
        record.update(status="pending", job_id=None, state=None, summary={})
    state_path.write_text(json.dumps(document))

    second = run_cli(tenant_gateway, "batch", str(small), "--out", str(out_dir), "--no-progress-bar")

    assert second.returncode == 0, second.stderr
    assert second.stderr.count("returned the job of an earlier submission") == 3
    replayed = {case_id: record["job_id"] for case_id, record in read_state(out_dir).items()}
    assert replayed == original
    assert len(tenant_job_ids(tenant_gateway)) == jobs_before + 3


def test_cli_segment_dicom_folder(tenant_gateway, tmp_path):
    case = require_shared("data", "ibsi_sts_019")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct_mask.nii.gz"))) > 0
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(box_prompts_from_mask(truth)))
    out_dir = tmp_path / "out"

    result = run_cli(tenant_gateway, "segment", str(case / "dicom_ct" / "image"), "--prompts", str(prompts), "--out", str(out_dir), "--engine", "classical")

    assert result.returncode == 0, result.stderr
    assert {path.name for path in out_dir.iterdir()} == ARTIFACTS | {"seg.dcm"}
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(case / "dicom_ct" / "image")))
    source = reader.Execute()
    mask = sitk.ReadImage(str(out_dir / "mask.nii.gz"))
    assert mask.GetSize() == source.GetSize()
    assert mask.GetSpacing() == pytest.approx(source.GetSpacing(), abs=1e-4)
    assert mask.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-3)
    assert mask.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-6)
    assert dice(sitk.GetArrayFromImage(mask) == 1, truth) >= MIN_CASE_DICE
    assert str(out_dir / "mask.nii.gz") in result.stdout.splitlines()


def test_cli_track_with_mask(tenant_gateway, tmp_path):
    root = require_shared("fixtures", "lesionlocator-reference", "inputs")
    baseline, followup = root / "images" / "example_ct.nii.gz", root / "images" / "example_ct_fu.nii.gz"
    baseline_mask = root / "prompts" / "instance_mask" / "example_ct.nii.gz"
    out_dir = tmp_path / "out"

    result = run_cli(tenant_gateway, "track", str(baseline), str(followup), "--mask", str(baseline_mask), "--out", str(out_dir), "--engine", "classical")

    assert result.returncode == 0, result.stderr
    for name, source_path in (("mask_t0.nii.gz", baseline), ("mask_t1.nii.gz", followup)):
        written, source = sitk.ReadImage(str(out_dir / name)), sitk.ReadImage(str(source_path))
        assert written.GetSize() == source.GetSize(), name
        assert written.GetSpacing() == source.GetSpacing(), name
        assert written.GetOrigin() == source.GetOrigin(), name
        assert written.GetDirection() == source.GetDirection(), name
    labels = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(baseline_mask))))) - {0}
    correspondence = json.loads((out_dir / "correspondence.json").read_text())
    rows = correspondence["followups"][0]["lesions"]
    assert {row["lesion_id"] for row in rows} == labels
    assert {row["status"] for row in rows} == {"tracked"}
    assert "RECIST 1.1 at timepoint 1:" in result.stdout


def test_batch_track_case_with_dicom_followup(tenant_gateway, tmp_path):
    case = require_shared("data", "ibsi_sts_019")
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct_mask.nii.gz"))) > 0
    (tmp_path / "prompts.json").write_text(json.dumps(box_prompts_from_mask(truth)))
    manifest = tmp_path / "track.csv"
    manifest.write_text(f"case_id,kind,image,followups,prompts,engine\nsts019_pair,track,{case / 'ct_image.nii.gz'},{case / 'dicom_ct' / 'image'},prompts.json,classical\n")
    out_dir = tmp_path / "out"

    result = run_cli(tenant_gateway, "batch", str(manifest), "--out", str(out_dir))

    assert result.returncode == 0, result.stderr
    with open(out_dir / "summary.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["kind"] == "track"
    assert row["state"] == "succeeded"
    assert row["lesion_count"] == "1"
    assert row["response"] in {"CR", "PR", "SD", "PD"}
    names = {path.name for path in (out_dir / "sts019_pair").iterdir()}
    assert {"mask_t0.nii.gz", "mask_t1.nii.gz", "correspondence.json", "seg_t1.dcm"} <= names
