import numpy as np
import pytest

from lesions.label_map import compose_instances
from lesions.store import JobStore


def test_artifact_written_atomically(tmp_path):
    store = JobStore(tmp_path)
    store.create("job1")

    with pytest.raises(RuntimeError):
        with store.staged_artifact("job1", "mask.nii.gz") as partial:
            partial.write_bytes(b"half")
            raise RuntimeError("worker died")

    assert store.list_artifacts("job1") == []
    store.write_artifact("job1", "lesions.json", b"{}")
    assert [p.name for p in store.list_artifacts("job1")] == ["lesions.json"]


@pytest.mark.parametrize("name", ["../inputs/image.nii.gz", "/etc/passwd", ".hidden", "a/b"])
def test_artifact_names_cannot_escape(tmp_path, name):
    store = JobStore(tmp_path)
    store.create("job1")

    assert store.artifact_path("job1", name) is None


def test_overlap_goes_to_smaller_lesion():
    big = np.zeros((4, 4, 4), bool)
    big[:, :, :3] = True
    small = np.zeros((4, 4, 4), bool)
    small[1, 1, 2:] = True

    labels, warnings = compose_instances({1: big, 2: small}, (4, 4, 4))

    assert labels[1, 1, 2] == 2
    assert labels[1, 1, 3] == 2
    assert labels[0, 0, 0] == 1
    assert len(warnings) == 1
    assert "lesion 1" in warnings[0] or "lesion 2" in warnings[0]
