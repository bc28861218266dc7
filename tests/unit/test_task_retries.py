import errno

import pytest
import redis

from worker.dicomweb_transfer import DicomwebError
from worker.tasks import MAX_TRANSIENT_RETRIES, is_transient, retry_delay_s


@pytest.mark.parametrize(
    "error, transient",
    [
        (redis.ConnectionError("connection refused"), True),
        (redis.TimeoutError("timed out"), True),
        (OSError(errno.ESTALE, "stale file handle"), True),
        (OSError(errno.EIO, "input/output error"), True),
        (FileNotFoundError(errno.ENOENT, "no such file"), False),
        (PermissionError(errno.EACCES, "permission denied"), False),
        (ValueError("bad value"), False),
        (RuntimeError("ITK could not read"), False),
        (DicomwebError("dicomweb_unreachable", "server 'pacs' could not be reached", transient=True), True),
        (DicomwebError("dicomweb_series_not_found", "series not found"), False),
    ],
)
def test_transient_errors_classified(error, transient):
    assert is_transient(error) is transient


def test_backoff_doubles_and_is_capped():
    delays = [retry_delay_s(retries) for retries in range(MAX_TRANSIENT_RETRIES + 3)]

    assert delays[:5] == [5, 10, 20, 40, 80]
    assert max(delays) == 300
