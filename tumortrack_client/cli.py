"""The ``tumortrack`` command: segment one CT, track lesions over follow-ups, or run a batch from a CSV manifest.

Exit codes:
  0    everything succeeded
  1    a job (or a batch case) failed, was cancelled or was rejected
  2    invalid command line, manifest, state file or local input
  3    the service rejected the request
  4    the service was unreachable or kept returning 429/503; a batch then
       has unfinished cases, and running it again resumes them
  130  interrupted
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tumortrack_client.batch import run_batch
from tumortrack_client.batch_state import StateFileError
from tumortrack_client.client import API_KEY_ENV, DEFAULT_URL, URL_ENV, TumorTrackClient
from tumortrack_client.errors import ApiError, InputFileError, ServiceUnavailableError, TumorTrackError, WaitTimeoutError
from tumortrack_client.job_report import segmentation_report, tracking_report
from tumortrack_client.manifest import ManifestError, read_manifest
from tumortrack_client.models import Job
from tumortrack_client.summary import format_table

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_REJECTED = 3
EXIT_UNAVAILABLE = 4
EXIT_INTERRUPTED = 130

NO_FOLLOWUP_PROMPTS = "-"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if arguments.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with TumorTrackClient(arguments.url, arguments.api_key, timeout_s=arguments.timeout) as client:
            return arguments.run(client, arguments)
    except (ManifestError, StateFileError, InputFileError, ValueError) as error:
        _fail(str(error))
        return EXIT_INVALID_INPUT
    except ApiError as error:
        _fail(f"the service rejected the request: {error}")
        return EXIT_REJECTED
    except (ServiceUnavailableError, WaitTimeoutError) as error:
        _fail(str(error))
        return EXIT_UNAVAILABLE
    except TumorTrackError as error:
        _fail(str(error))
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        _fail("interrupted; a batch resumes where it stopped when run again with the same --out")
        sys.stdout.flush()
        sys.stderr.flush()
        # A batch's case threads may still be uploading or polling, and Python would wait for them
        # at exit. Leaving at once is safe because the state file is only ever replaced whole.
        # NOTE: a temporary zip of a DICOM folder that a thread was uploading stays in the temp folder.
        os._exit(EXIT_INTERRUPTED)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"service base URL (default: ${URL_ENV}, else {DEFAULT_URL})")
    common.add_argument("--api-key", help=f"API key sent as a Bearer token (default: ${API_KEY_ENV}; prefer the variable, since other users can see command lines)")
    common.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS", help="network timeout of each read or write (default: 120)")
    common.add_argument("-v", "--verbose", action="store_true", help="log retries and requests at INFO level")

    parser = argparse.ArgumentParser(prog="tumortrack", description="Client of the TumorTrack lesion segmentation and tracking service.", epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    segment = commands.add_parser("segment", parents=[common], help="segment the prompted lesions of one CT", description="Upload one CT with prompts, wait for the job, download its artifacts into --out.")
    segment.add_argument("image", type=Path, metavar="IMAGE", help="CT as .nii, .nii.gz, .nrrd or .mha, a DICOM folder, or a .zip of one")
    segment.add_argument("--prompts", type=Path, required=True, metavar="P.json", help="prompt JSON (TumorTrack, LesionLocator or grand-challenge points)")
    segment.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the artifacts (created when missing)")
    segment.add_argument("--engine", help="engine name, e.g. classical or lesionlocator (default: the service's)")
    segment.add_argument("--series-uid", help="Series Instance UID to use when the DICOM upload contains several series")
    segment.set_defaults(run=_segment)

    track = commands.add_parser("track", parents=[common], help="track lesions from a baseline through follow-ups", description="Upload a baseline, follow-ups in time order and the baseline's mask or prompts; wait; download the artifacts into --out.")
    track.add_argument("baseline", type=Path, metavar="BASELINE", help="baseline CT: volume file, DICOM folder or .zip")
    track.add_argument("followups", type=Path, nargs="+", metavar="FOLLOWUP", help="follow-up CTs in time order")
    lesions = track.add_mutually_exclusive_group(required=True)
    lesions.add_argument("--mask", type=Path, metavar="M", help="baseline instance mask on the baseline's grid (label = lesion id)")
    lesions.add_argument("--prompts", type=Path, metavar="P.json", help="prompt JSON for the baseline")
    track.add_argument("--followup-prompts", nargs="+", metavar="P.json", help=f"prompt JSON per follow-up marking lesions to look for there, one per follow-up, '{NO_FOLLOWUP_PROMPTS}' for none")
    track.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the artifacts (created when missing)")
    track.add_argument("--engine", help="engine name (default: the service's)")
    track.add_argument("--series-uid", help="Series Instance UID of the baseline when its DICOM upload contains several series")
    track.set_defaults(run=_track)

    batch = commands.add_parser("batch", parents=[common], help="run every case of a CSV manifest", description="Submit every case of MANIFEST, several at a time, download each case's artifacts into DIR/<case_id>/ and write DIR/summary.csv. Run it again with the same --out to resume: finished cases are skipped and submitted ones are not submitted twice. Manifest columns: case_id, kind (segment or track), image, followups (';'-separated), prompts, mask, followup_prompts (';'-separated), engine, series_uid; paths relative to the manifest.")
    batch.add_argument("manifest", type=Path, metavar="MANIFEST.csv")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder; it contains the state file from which a rerun resumes")
    batch.add_argument("--concurrency", type=_positive_int, default=4, metavar="N", help="cases in flight at once (default: 4)")
    batch.add_argument("--retry-failed", action="store_true", help="submit again the cases that failed, were cancelled or were rejected in an earlier run")
    batch.add_argument("--job-timeout", type=float, metavar="SECONDS", help="give up waiting for one job after this long; it stays unfinished for a rerun (default: no limit)")
    batch.add_argument("--no-progress-bar", action="store_true", help="print one line per event even on a terminal")
    batch.set_defaults(run=_batch)
    return parser


def _segment(client: TumorTrackClient, arguments: argparse.Namespace) -> int:
    submitted = client.submit_segmentation(arguments.image, arguments.prompts, engine=arguments.engine, series_uid=arguments.series_uid)
    return _finish(client, submitted.id, arguments.out, segmentation_report)


def _track(client: TumorTrackClient, arguments: argparse.Namespace) -> int:
    followup_prompts = None
    if arguments.followup_prompts is not None:
        followup_prompts = [None if entry == NO_FOLLOWUP_PROMPTS else Path(entry) for entry in arguments.followup_prompts]
    submitted = client.submit_tracking(
        arguments.baseline,
        arguments.followups,
        prompts=arguments.prompts,
        baseline_mask=arguments.mask,
        followup_prompts=followup_prompts,
        engine=arguments.engine,
        baseline_series_uid=arguments.series_uid,
    )
    return _finish(client, submitted.id, arguments.out, tracking_report)


def _finish(client: TumorTrackClient, job_id: str, out_dir: Path, report) -> int:
    """Wait for the job, print its progress and results, download its artifacts; return the exit code."""
    print(f"job {job_id} submitted", file=sys.stderr)
    job = client.wait(job_id, on_update=_stage_printer())
    if job.state != "succeeded":
        error = f"{job.error.code}: {job.error.message}" if job.error else "no error given"
        _fail(f"job {job.id} {job.state}: {error}")
        return EXIT_JOB_FAILED

    paths = client.download_artifacts(job, out_dir)
    for warning in job.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report(out_dir))
    for path in paths:
        print(path)
    return EXIT_OK


def _stage_printer():
    last = {"state": None, "stage": None}

    def show(job: Job) -> None:
        if (job.state, job.stage) != (last["state"], last["stage"]):
            last.update(state=job.state, stage=job.stage)
            stage = f", stage {job.stage}" if job.stage else ""
            print(f"job {job.id}: {job.state}{stage} ({job.progress:.0%})", file=sys.stderr)

    return show


def _batch(client: TumorTrackClient, arguments: argparse.Namespace) -> int:
    manifest = read_manifest(arguments.manifest)
    progress_bar = False if arguments.no_progress_bar else None
    outcome = run_batch(client, manifest, arguments.out, concurrency=arguments.concurrency, retry_failed=arguments.retry_failed, wait_timeout_s=arguments.job_timeout, progress_bar=progress_bar)

    print(format_table(outcome.summary))
    print(f"summary written to {outcome.summary_path}", file=sys.stderr)
    if outcome.unfinished:
        _fail(f"{outcome.unfinished} case(s) unfinished; run the same command again to resume them")
        return EXIT_UNAVAILABLE
    return EXIT_OK if outcome.all_succeeded else EXIT_JOB_FAILED


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _fail(message: str) -> None:
    print(f"tumortrack: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
