"""The batch manifest parser: valid rows, and one test per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tumortrack_client.cli import EXIT_INVALID_INPUT, main
from tumortrack_client.manifest import ManifestError, read_manifest


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A folder with the files the manifests below refer to."""
    for name in ("ct1.nii.gz", "ct2.nii.gz", "ct3.nii.gz", "mask.nii.gz", "p1.json", "p2.json", "series.zip"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "1.dcm").write_bytes(b"x")
    return tmp_path


def write_manifest(folder: Path, text: str) -> Path:
    path = folder / "manifest.csv"
    path.write_text(text)
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    return [str(problem) for problem in caught.value.problems]


def test_manifest_valid_rows(inputs):
    path = write_manifest(inputs, (
        "case_id,kind,image,followups,prompts,mask,followup_prompts,engine\n"
        "a1,segment,ct1.nii.gz,,p1.json,,,classical\n"
        "a2,,dicom,,p1.json,,,\n"
        "\n"
        "t1,track,ct1.nii.gz,ct2.nii.gz;ct3.nii.gz,,mask.nii.gz,p1.json;,\n"
        "t2,track,series.zip,ct2.nii.gz,p2.json,,,\n"
    ))

    manifest = read_manifest(path)

    assert [case.case_id for case in manifest.cases] == ["a1", "a2", "t1", "t2"]
    a1, a2, t1, t2 = manifest.cases
    assert a1.image == inputs / "ct1.nii.gz"
    assert a1.engine == "classical"
    assert a2.kind == "segment"
    assert a2.image == inputs / "dicom"
    assert a2.engine is None
    assert t1.followups == (inputs / "ct2.nii.gz", inputs / "ct3.nii.gz")
    assert t1.mask == inputs / "mask.nii.gz"
    assert t1.prompts is None
    assert t1.followup_prompts == (inputs / "p1.json", None)
    assert t1.line == 5
    assert t2.prompts == inputs / "p2.json"
    assert t2.followup_prompts == ()


def test_manifest_columns_case_insensitive_any_order(inputs):
    path = write_manifest(inputs, "Prompts, IMAGE ,case_id\np1.json,ct1.nii.gz,c\n")

    case = read_manifest(path).cases[0]

    assert case.image == inputs / "ct1.nii.gz"
    assert case.prompts == inputs / "p1.json"


def test_manifest_absolute_paths(inputs, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("manifests")
    path = write_manifest(elsewhere, f"case_id,image,prompts\nc,{inputs / 'ct1.nii.gz'},{inputs / 'p1.json'}\n")

    assert read_manifest(path).cases[0].image == inputs / "ct1.nii.gz"


def test_manifest_missing_file(inputs):
    path = write_manifest(inputs, "case_id,image,prompts\nok,ct1.nii.gz,p1.json\nbad,absent.nii.gz,p1.json\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith("line 3, column 'image': 'absent.nii.gz' does not exist")
    assert str(inputs / "absent.nii.gz") in problems[0]


def test_manifest_missing_followup_file(inputs):
    path = write_manifest(inputs, "case_id,kind,image,followups,mask\nt,track,ct1.nii.gz,ct2.nii.gz;gone.nii.gz,mask.nii.gz\n")

    assert problems_of(path) == [f"line 2, column 'followups': 'gone.nii.gz' does not exist (looked for {inputs / 'gone.nii.gz'})"]


def test_manifest_unknown_column(inputs):
    path = write_manifest(inputs, "case_id,image,prompts,modality\nc,ct1.nii.gz,p1.json,CT\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith("line 1, column 'modality': unknown column (header cell 4)")
    assert "case_id, kind, image" in problems[0]


def test_manifest_missing_required_column(inputs):
    path = write_manifest(inputs, "case_id,prompts\nc,p1.json\n")

    assert problems_of(path) == ["line 1, column 'image': required column is missing"]


def test_manifest_repeated_column(inputs):
    path = write_manifest(inputs, "case_id,image,image,prompts\nc,ct1.nii.gz,ct2.nii.gz,p1.json\n")

    assert problems_of(path) == ["line 1, column 'image': column appears more than once"]


def test_manifest_duplicate_case_id(inputs):
    path = write_manifest(inputs, "case_id,image,prompts\nsame,ct1.nii.gz,p1.json\nother,ct2.nii.gz,p1.json\nsame,ct3.nii.gz,p1.json\n")

    assert problems_of(path) == ["line 4, column 'case_id': duplicate case id 'same'; line 2 already uses it"]


@pytest.mark.parametrize("case_id", ["", "../up", "a/b", ".hidden", "x" * 101, "summary.csv", "batch-state.json"])
def test_manifest_invalid_case_id(inputs, case_id):
    path = write_manifest(inputs, f"case_id,image,prompts\n{case_id},ct1.nii.gz,p1.json\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith("line 2, column 'case_id':")


def test_manifest_unknown_kind(inputs):
    path = write_manifest(inputs, "case_id,kind,image,prompts\nc,segmentation,ct1.nii.gz,p1.json\n")

    assert problems_of(path) == ["line 2, column 'kind': 'segmentation' is not a kind; use 'segment' or 'track'"]


def test_manifest_segment_without_prompts(inputs):
    path = write_manifest(inputs, "case_id,image,prompts\nc,ct1.nii.gz,\n")

    assert problems_of(path) == ["line 2, column 'prompts': is empty; a segment case needs a prompt JSON file"]


def test_manifest_segment_with_track_columns(inputs):
    path = write_manifest(inputs, "case_id,image,prompts,followups\nc,ct1.nii.gz,p1.json,ct2.nii.gz\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith("line 2, column 'followups': applies to kind 'track' only")


def test_manifest_track_needs_followups(inputs):
    path = write_manifest(inputs, "case_id,kind,image,followups,mask\nt,track,ct1.nii.gz,,mask.nii.gz\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith("line 2, column 'followups': is empty")


@pytest.mark.parametrize("prompts,mask", [("p1.json", "mask.nii.gz"), ("", "")])
def test_manifest_track_prompts_xor_mask(inputs, prompts, mask):
    path = write_manifest(inputs, f"case_id,kind,image,followups,prompts,mask\nt,track,ct1.nii.gz,ct2.nii.gz,{prompts},{mask}\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith("line 2, column 'prompts': give exactly one of 'prompts'")


def test_manifest_followup_prompts_count(inputs):
    path = write_manifest(inputs, "case_id,kind,image,followups,mask,followup_prompts\nt,track,ct1.nii.gz,ct2.nii.gz,mask.nii.gz,p1.json;p2.json\n")

    assert problems_of(path) == ["line 2, column 'followup_prompts': has 2 entries for 1 follow-ups; give one per follow-up separated by ';', empty for none"]


def test_manifest_prompts_folder_is_not_file(inputs):
    path = write_manifest(inputs, "case_id,image,prompts\nc,ct1.nii.gz,dicom\n")

    assert problems_of(path) == ["line 2, column 'prompts': 'dicom' is not a file"]


def test_manifest_wrong_cell_count(inputs):
    path = write_manifest(inputs, "case_id,image,prompts\nc,ct1.nii.gz,p1.json,extra\n")

    assert problems_of(path) == ["line 2: has 4 cells but the header has 3 columns"]


def test_manifest_lists_every_problem(inputs):
    path = write_manifest(inputs, "case_id,image,prompts\na,gone1.nii.gz,p1.json\nb,ct1.nii.gz,gone.json\n")

    problems = problems_of(path)

    assert [problem.split(":")[0] for problem in problems] == ["line 2, column 'image'", "line 3, column 'prompts'"]


@pytest.mark.parametrize("text,expected", [("", "file is empty"), ("case_id,image,prompts\n", "has a header but no case rows")])
def test_manifest_empty(inputs, text, expected):
    path = write_manifest(inputs, text)

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_manifest_file_missing(tmp_path):
    assert problems_of(tmp_path / "none.csv") == ["file does not exist"]


def test_manifest_fingerprint_follows_row(inputs):
    path = write_manifest(inputs, "case_id,image,prompts,engine\nc,ct1.nii.gz,p1.json,\n")
    first = read_manifest(path).cases[0].fingerprint()
    same = read_manifest(path).cases[0].fingerprint()
    write_manifest(inputs, "case_id,image,prompts,engine\nc,ct1.nii.gz,p2.json,\n")
    edited = read_manifest(path).cases[0].fingerprint()

    assert first == same
    assert edited != first


def test_cli_bad_manifest_exit_code(inputs, tmp_path, capsys):
    path = write_manifest(inputs, "case_id,image,prompts\nsame,ct1.nii.gz,p1.json\nsame,absent.nii.gz,p1.json\n")

    code = main(["batch", str(path), "--out", str(tmp_path / "out"), "--url", "http://127.0.0.1:9"])

    error = capsys.readouterr().err
    assert code == EXIT_INVALID_INPUT
    assert "invalid manifest" in error
    assert "line 3, column 'image': 'absent.nii.gz' does not exist" in error
    assert not (tmp_path / "out").exists()


def test_unknown_column_still_checks_rows(inputs):
    path = write_manifest(inputs, (
        "case_id,image,prompts,colour\n"
        "a1,ct1.nii.gz,p1.json,red\n"
        "a2,missing.nii.gz,p1.json,blue\n"
    ))

    problems = problems_of(path)

    assert len(problems) == 2
    assert "unknown column" in problems[0]
    assert "line 3" in problems[1]
    assert "missing.nii.gz" in problems[1]


def test_duplicate_id_reported_with_other_problems(inputs):
    path = write_manifest(inputs, (
        "case_id,image,prompts\n"
        "a1,ct1.nii.gz,p1.json\n"
        "a1,missing.nii.gz,p1.json\n"
    ))

    problems = problems_of(path)

    assert len(problems) == 2
    assert any("duplicate case id 'a1'" in problem and "line 3" in problem for problem in problems)
    assert any("missing.nii.gz" in problem for problem in problems)
