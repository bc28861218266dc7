import platform

import pytest

from worker.engines.lesionlocator import heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc thresholds exist only in glibc")
def test_thresholds_raised_once_on_glibc():
    assert heap.keep_freed_memory() is True
    assert heap.keep_freed_memory() is True
    heap.release_freed_memory()


def test_release_without_raised_thresholds_is_harmless(monkeypatch):
    monkeypatch.setattr(heap, "_configured", False)

    heap.release_freed_memory()
