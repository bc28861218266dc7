"""Look again for lesions that a follow-up did not show.

A lesion outside one follow-up's field of view, or too small for its voxels, is
missing from that follow-up's label map, so tracking the next follow-up from
it would lose the lesion for good. Instead, each later follow-up is tracked
from the time point where the lesion was last seen. Chaining the registrations
of the pairs in between gives the transform, so no pair is registered again.

Conventions as in ``worker.tracking.classical_tracker``: a transform maps
follow-up physical points to previous physical points, and label maps are
[z, y, x] arrays on their image's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from worker.engines.base import Engine, EngineOptions
from worker.tracking.classical_tracker import LesionTrack, track_lesions

@dataclass(frozen=True)
class SeenAt:
    """A time point of the series: its image, its label map, and the transform from
    its points to the previous time point's (None for the baseline)."""

    image: sitk.Image
    labels: np.ndarray
    transform: sitk.Transform | None


def chain_transforms(transforms: Sequence[sitk.Transform]) -> sitk.Transform:
    """Return the transform from the last time point to the one before the first.

    ``transforms`` are those of consecutive follow-ups, oldest first, each from a
    follow-up to the time point before it. ITK's CompositeTransform applies the
    transform added last first, so the newest follow-up's own transform comes last.
    """
    return sitk.CompositeTransform(list(transforms))


def track_unseen(
    series: Sequence[SeenAt],
    last_seen: dict[int, int],
    followup_image: sitk.Image,
    followup_transform: sitk.Transform,
    engine: Engine,
    options: EngineOptions,
) -> tuple[dict[int, LesionTrack], dict[int, np.ndarray]]:
    """Track each lesion of ``last_seen`` ({lesion id: index in ``series`` where it was
    last seen}) from that time point into ``followup_image``.

    ``followup_transform`` maps the follow-up to the last time point of ``series``.
    Returns the tracks, with a note naming the time point, and the masks found.
    """
    tracks: dict[int, LesionTrack] = {}
    masks: dict[int, np.ndarray] = {}
    for index in sorted(set(last_seen.values())):
        ids = [lesion_id for lesion_id, seen in last_seen.items() if seen == index]
        source = series[index]
        labels = np.where(np.isin(source.labels, ids), source.labels, 0)
        transform = chain_transforms([point.transform for point in series[index + 1 :]] + [followup_transform])

        result = track_lesions(source.image, labels, followup_image, engine, transform=transform, options=options)

        for lesion_id, track in result.lesions.items():
            note = f"tracked from time point {index}, where it was last seen"
            tracks[lesion_id] = replace(track, note="; ".join(filter(None, [note, track.note])))
            if track.status == "tracked":
                masks[lesion_id] = result.followup_labels == lesion_id
    return tracks, masks
