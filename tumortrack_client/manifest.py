"""The batch manifest: a CSV file with one row per case.

Columns (header row required, names case-insensitive, order free):

- ``case_id`` (required): unique name of the case; results go to OUT/<case_id>/.
  Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 100.
- ``kind``: ``segment`` (default when empty or absent) or ``track``.
- ``image`` (required): the CT for ``segment``, the baseline CT for ``track``:
  a .nii, .nii.gz, .nrrd or .mha file, a DICOM folder, or a .zip of one.
- ``followups``: ``track`` only, required there: follow-up images in time
  order, separated by ``;``.
- ``prompts``: prompt JSON file. Required for ``segment``; for ``track`` give
  it or ``mask``.
- ``mask``: ``track`` only: baseline instance mask on the baseline's grid.
- ``followup_prompts``: ``track`` only: prompt JSON per follow-up, separated by
  ``;``, one entry per follow-up, an empty entry for none.
- ``engine``: engine name for the case; empty for the service's default.
- ``series_uid``: Series Instance UID when the (baseline) DICOM upload contains several series.

Paths are relative to the manifest's folder unless absolute. Empty rows are
skipped. Every problem found is reported with its line and column, not only
the first.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tumortrack_client.layout import RESERVED_NAMES

COLUMNS = ("case_id", "kind", "image", "followups", "prompts", "mask", "followup_prompts", "engine", "series_uid")
REQUIRED_COLUMNS = ("case_id", "image")
KINDS = ("segment", "track")
LIST_SEPARATOR = ";"
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_REPORTED_PROBLEMS = 50


@dataclass(frozen=True)
class ManifestProblem:
    """One thing wrong in the manifest; ``line`` is the file's line number (the header is line 1)."""

    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ManifestError(Exception):
    """The manifest cannot be used; ``problems`` lists every problem found."""

    def __init__(self, path: Path, problems: list[ManifestProblem]):
        self.path = path
        self.problems = problems
        listed = problems[:MAX_REPORTED_PROBLEMS]
        lines = [f"invalid manifest {path}: {len(problems)} problem(s)"] + [f"  {problem}" for problem in listed]
        if len(problems) > len(listed):
            lines.append(f"  ... and {len(problems) - len(listed)} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Case:
    """One manifest row, with paths resolved against the manifest's folder."""

    case_id: str
    kind: str
    image: Path
    line: int
    followups: tuple[Path, ...] = ()
    prompts: Path | None = None
    mask: Path | None = None
    followup_prompts: tuple[Path | None, ...] = ()
    engine: str | None = None
    series_uid: str | None = None

    def fingerprint(self) -> str:
        """Return a digest of what the case submits, so an edited row counts as a new case."""
        description = {
            "kind": self.kind,
            "image": str(self.image),
            "followups": [str(path) for path in self.followups],
            "prompts": str(self.prompts) if self.prompts else None,
            "mask": str(self.mask) if self.mask else None,
            "followup_prompts": [str(path) if path else None for path in self.followup_prompts],
            "engine": self.engine,
            "series_uid": self.series_uid,
        }
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    path: Path
    cases: list[Case]


def read_manifest(path: Path) -> Manifest:
    """Parse and check a manifest; raise ManifestError listing every problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ManifestError(path, [ManifestProblem(None, None, "file does not exist")])
    base = path.resolve().parent
    problems: list[ManifestProblem] = []

    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ManifestError(path, [ManifestProblem(None, None, "file is empty; the first line must name the columns, e.g. case_id,kind,image,prompts")])
        columns = _check_header([name.strip().lower() for name in header], problems)
        # Rows cannot be read without the required columns. Unknown or repeated
        # columns are left out, and the rows are still checked, so that one run
        # lists every problem.
        if any(name not in columns for name in REQUIRED_COLUMNS):
            raise ManifestError(path, problems)

        cases: list[Case] = []
        first_line_of: dict[str, int] = {}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != len(columns):
                problems.append(ManifestProblem(line, None, f"has {len(row)} cells but the header has {len(columns)} columns"))
                continue
            values = _known_values(columns, row)
            case_id = values.get("case_id", "")
            if case_id in first_line_of:
                problems.append(ManifestProblem(line, "case_id", f"duplicate case id {case_id!r}; line {first_line_of[case_id]} already uses it"))
            else:
                first_line_of[case_id] = line
            case = _parse_row(values, line, base, problems)
            if case is not None and first_line_of[case_id] == line:
                cases.append(case)

    if not cases and not problems:
        problems.append(ManifestProblem(None, None, "has a header but no case rows"))
    if problems:
        raise ManifestError(path, problems)
    return Manifest(path=path, cases=cases)


def _known_values(columns: list[str], row: list[str]) -> dict[str, str]:
    """Return {column: stripped cell} for the known columns, the first of each name."""
    values: dict[str, str] = {}
    for name, cell in zip(columns, row):
        if name in COLUMNS and name not in values:
            values[name] = cell.strip()
    return values


def _check_header(columns: list[str], problems: list[ManifestProblem]) -> list[str]:
    for position, name in enumerate(columns, start=1):
        if name not in COLUMNS:
            problems.append(ManifestProblem(1, name, f"unknown column (header cell {position}); known columns: {', '.join(COLUMNS)}"))
        elif columns.count(name) > 1 and columns.index(name) != position - 1:
            problems.append(ManifestProblem(1, name, "column appears more than once"))
    for name in REQUIRED_COLUMNS:
        if name not in columns:
            problems.append(ManifestProblem(1, name, "required column is missing"))
    return columns


def _parse_row(values: dict[str, str], line: int, base: Path, problems: list[ManifestProblem]) -> Case | None:
    """Check one row; append its problems and return the Case when it has none."""
    before = len(problems)

    def problem(column: str, message: str) -> None:
        problems.append(ManifestProblem(line, column, message))

    case_id = values.get("case_id", "")
    if not CASE_ID.match(case_id):
        problem("case_id", f"{case_id!r} is not a valid case id; use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    elif case_id in RESERVED_NAMES:
        problem("case_id", f"{case_id!r} is the name of a file the batch writes into its output folder; choose another case id")
    kind = values.get("kind", "") or "segment"
    if kind not in KINDS:
        problem("kind", f"{kind!r} is not a kind; use 'segment' or 'track'")

    image = _existing_path(values.get("image", ""), base, "image", problem, required=True)
    prompts = _existing_path(values.get("prompts", ""), base, "prompts", problem, file_only=True)
    mask = _existing_path(values.get("mask", ""), base, "mask", problem, file_only=True)
    followups = _path_list(values.get("followups", ""), base, "followups", problem)
    followup_prompts = _path_list(values.get("followup_prompts", ""), base, "followup_prompts", problem, file_only=True, allow_empty_entries=True)

    if kind == "segment":
        if not values.get("prompts"):
            problem("prompts", "is empty; a segment case needs a prompt JSON file")
        for column in ("followups", "mask", "followup_prompts"):
            if values.get(column):
                problem(column, "applies to kind 'track' only; leave it empty for 'segment' or set kind to 'track'")
    elif kind == "track":
        if not values.get("followups"):
            problem("followups", "is empty; a track case needs one or more follow-up images separated by ';'")
        if bool(values.get("prompts")) == bool(values.get("mask")):
            problem("prompts", "give exactly one of 'prompts' (baseline prompt JSON) or 'mask' (baseline instance mask) for a track case")
        if values.get("followup_prompts") and len(followup_prompts) != len(followups):
            problem("followup_prompts", f"has {len(followup_prompts)} entries for {len(followups)} follow-ups; give one per follow-up separated by ';', empty for none")

    if len(problems) > before or image is None:
        return None
    return Case(
        case_id=case_id,
        kind=kind,
        image=image,
        line=line,
        followups=tuple(path for path in followups if path is not None),
        prompts=prompts,
        mask=mask,
        followup_prompts=tuple(followup_prompts) if values.get("followup_prompts") else (),
        engine=values.get("engine") or None,
        series_uid=values.get("series_uid") or None,
    )


def _existing_path(text: str, base: Path, column: str, problem, required: bool = False, file_only: bool = False) -> Path | None:
    if not text:
        if required:
            problem(column, "is empty; give a path relative to the manifest's folder or an absolute one")
        return None
    path = (base / Path(text).expanduser()).resolve()
    if not path.exists():
        problem(column, f"{text!r} does not exist (looked for {path})")
        return None
    if file_only and not path.is_file():
        problem(column, f"{text!r} is not a file")
        return None
    return path


def _path_list(text: str, base: Path, column: str, problem, file_only: bool = False, allow_empty_entries: bool = False) -> list[Path | None]:
    if not text:
        return []
    paths: list[Path | None] = []
    for position, entry in enumerate(part.strip() for part in text.split(LIST_SEPARATOR)):
        if not entry:
            if not allow_empty_entries:
                problem(column, f"entry {position + 1} is empty; separate paths with a single ';'")
            paths.append(None)
            continue
        paths.append(_existing_path(entry, base, column, problem, file_only=file_only))
    return paths
