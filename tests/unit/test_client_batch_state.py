"""The batch state file: stable idempotency keys, new attempts, atomic rewrites, unreadable files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tumortrack_client import batch_state
from tumortrack_client.batch_state import DONE, PENDING, SUBMITTED, BatchState, StateFileError, exclusive_run
from tumortrack_client.layout import remove_temporary_files
from tumortrack_client.manifest import Case, Manifest

STATE_NAME = "batch-state.json"


def manifest_of(*cases: Case) -> Manifest:
    return Manifest(path=Path("manifest.csv"), cases=list(cases))


def case(case_id: str, prompts: str = "p.json") -> Case:
    return Case(case_id=case_id, kind="segment", image=Path("/data/ct.nii.gz"), line=2, prompts=Path(f"/data/{prompts}"))


def test_state_new_file_lists_cases_pending(tmp_path):
    state = BatchState.open(tmp_path, manifest_of(case("a"), case("b")))

    document = json.loads((tmp_path / STATE_NAME).read_text())
    assert document["format_version"] == 1
    assert document["batch_id"] == state.batch_id
    assert set(document["cases"]) == {"a", "b"}
    assert {record["status"] for record in document["cases"].values()} == {PENDING}


def test_state_reopen_keeps_progress_and_keys(tmp_path):
    manifest = manifest_of(case("a"), case("b"))
    first = BatchState.open(tmp_path, manifest)
    key_a = first.idempotency_key(manifest.cases[0])
    first.update("a", status=SUBMITTED, job_id="job-a", state="queued")
    first.update("b", status=DONE, job_id="job-b", state="succeeded", summary={"lesion_count": 1})

    second = BatchState.open(tmp_path, manifest)

    assert second.batch_id == first.batch_id
    assert second.idempotency_key(manifest.cases[0]) == key_a
    assert second.get("a").status == SUBMITTED
    assert second.get("a").job_id == "job-a"
    assert second.get("b").summary == {"lesion_count": 1}


def test_state_keys_differ_per_case_and_batch(tmp_path):
    manifest = manifest_of(case("a"), case("b"))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first_state = BatchState.open(tmp_path / "one", manifest)
    second_state = BatchState.open(tmp_path / "two", manifest)

    keys = {first_state.idempotency_key(manifest.cases[0]), first_state.idempotency_key(manifest.cases[1]), second_state.idempotency_key(manifest.cases[0])}

    assert len(keys) == 3
    for key in keys:
        assert len(key) <= 128
        assert key.replace("-", "").isalnum()


def test_state_edited_row_starts_new_attempt(tmp_path):
    original = case("a")
    state = BatchState.open(tmp_path, manifest_of(original))
    old_key = state.idempotency_key(original)
    state.update("a", status=DONE, job_id="job-a", state="succeeded")

    edited = case("a", prompts="other.json")
    reopened = BatchState.open(tmp_path, manifest_of(edited))

    record = reopened.get("a")
    assert record.status == PENDING
    assert record.job_id is None
    assert record.attempt == 2
    assert reopened.idempotency_key(edited) != old_key


def test_state_retry_failed_restarts_only_unsuccessful(tmp_path):
    manifest = manifest_of(case("ok"), case("failed"), case("rejected"), case("running"))
    state = BatchState.open(tmp_path, manifest)
    state.update("ok", status=DONE, job_id="1", state="succeeded")
    state.update("failed", status=DONE, job_id="2", state="failed", error="internal_error: boom")
    state.update("rejected", status=DONE, state="rejected", error="HTTP 422")
    state.update("running", status=SUBMITTED, job_id="4", state="running")

    without = BatchState.open(tmp_path, manifest)
    assert without.get("failed").status == DONE
    retried = BatchState.open(tmp_path, manifest, retry_failed=True)

    assert retried.get("ok").status == DONE
    assert retried.get("failed").status == PENDING
    assert retried.get("failed").attempt == 2
    assert retried.get("failed").error is None
    assert retried.get("rejected").status == PENDING
    assert retried.get("running").status == SUBMITTED
    assert retried.get("running").job_id == "4"


def test_state_keeps_cases_missing_from_manifest(tmp_path):
    BatchState.open(tmp_path, manifest_of(case("a"), case("b"))).update("b", status=DONE, state="succeeded")

    BatchState.open(tmp_path, manifest_of(case("a")))

    document = json.loads((tmp_path / STATE_NAME).read_text())
    assert document["cases"]["b"]["status"] == DONE


def test_state_write_failure_keeps_old_file(tmp_path, monkeypatch):
    state = BatchState.open(tmp_path, manifest_of(case("a")))
    state.update("a", status=SUBMITTED, job_id="job-a")
    before = (tmp_path / STATE_NAME).read_text()

    def broken_dump(document, handle, **options):
        handle.write('{"format_version": 1, "cases": {')
        raise OSError("disk full")

    monkeypatch.setattr(batch_state.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        state.update("a", status=DONE, state="succeeded")

    assert (tmp_path / STATE_NAME).read_text() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [STATE_NAME]


def test_state_unreadable_file(tmp_path):
    (tmp_path / STATE_NAME).write_text('{"format_version": 1, "cases": {')

    with pytest.raises(StateFileError, match="cannot be read .*move it away to start the batch anew"):
        BatchState.open(tmp_path, manifest_of(case("a")))


def test_state_other_format_version(tmp_path):
    (tmp_path / STATE_NAME).write_text(json.dumps({"format_version": 99, "batch_id": "x", "cases": {}}))

    with pytest.raises(StateFileError, match="format version 99"):
        BatchState.open(tmp_path, manifest_of(case("a")))


def test_state_folder_locked_by_one_run(tmp_path):
    with exclusive_run(tmp_path):
        with pytest.raises(StateFileError, match="another tumortrack batch is running on"):
            with exclusive_run(tmp_path):
                pass

    with exclusive_run(tmp_path):
        pass


def test_layout_removes_leftover_temporary_files(tmp_path):
    (tmp_path / ".batch-state.json.k2j3").write_text("{")
    (tmp_path / ".summary.csv.x1").write_text("case_id")
    (tmp_path / "batch-state.json").write_text("{}")
    (tmp_path / "case_01").mkdir()

    remove_temporary_files(tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["batch-state.json", "case_01"]
