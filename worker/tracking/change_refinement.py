"""Follow a lesion's border from one time point to the next by what changed.

After registration, the previous lesion mask warped onto the follow-up shows
where the lesion was, and the previous image warped the same way shows what
each voxel looked like then. The follow-up mask is the warped mask with its
border moved by the change between the two images:

1. Local levels. New lesion tissue looks like the part of the lesion next to
   it, and tissue that replaces a shrinking lesion looks like the tissue
   around it. So every voxel gets the previous image's level of the nearest
   lesion core and of the nearest surrounding tissue, each smoothed over
   ``LEVEL_SMOOTHING_MM``. A lesion that is brighter than one neighbour and
   darker than another is handled voxel by voxel.
2. Evidence per voxel. Outside the warped mask, a voxel shows growth when its
   change covers more than half of the way from its previous value to the local
   lesion level. Inside, it shows shrinkage when the change covers more than
   half of the way to the local surrounding level. A voxel counts as evidence
   only when that way is at least ``MIN_CONTRAST_NOISE`` times the noise of the
   change. Any other voxel would look the same before and after the change, so
   it cannot show one.
3. A vote by depth. A growing or shrinking border moves as one front. So the
   voxels at each distance from the warped border (shells of ``SHELL_MM``) join
   or leave the lesion where most of the evidence around them, within
   ``VOTE_RADIUS_MM``, does. This also decides the voxels that cannot show a
   change: tissue next to the lesion that already looked like the lesion, or
   necrosis inside it. The vote goes shell by shell away from the border and
   stops at the first shell whose evidence shows no change.

An unchanged lesion keeps its border, because nothing changed: a scan compared
with itself gives the warped mask back.

NOTE: the vote assumes that the border moves by about the same distance over
each ``VOTE_RADIUS_MM`` of its surface. Where a lesion grows into tissue that
already looked like it, the growth is inferred from the border beside it, not
seen. The local levels model new tissue as the nearest lesion core, which is
also how tests/followup_generator.py paints growth. On its follow-ups of eight
real CT lesions, a 3 mm growth or shrinkage was measured within 10 % of the
baseline volume in 15 of 16 cases. A faint growth was measured 18 % short
(tests/quality/test_classical_tracking.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Gaussian smoothing of both images, in mm: enough to keep scanner noise from
# flipping single voxels, small against a 3 mm change.
SMOOTHING_MM = 1.0

# The lesion core is the part of the warped mask at least this deep (mm), beyond
# the partial-volume border. The surrounding tissue lies this far outside the
# mask (inner, outer edge, mm).
CORE_DEPTH_MM = 2.0
SURROUNDING_SHELL_MM = (2.0, 6.0)
# Lesions and tissue vary in HU across their extent, so the local level is the
# masked Gaussian average over this width (mm).
LEVEL_SMOOTHING_MM = 2.0

# A voxel is evidence only when its previous value is this many noise standard
# deviations of the change away from the level it would change to.
MIN_CONTRAST_NOISE = 3.0
# The noise of the change is measured on voxels at least this far from the
# warped mask (mm), where the lesion's own change does not reach.
NOISE_DISTANCE_MM = 6.0
# Floor of the noise estimate, in HU, so that two identical images yield no evidence.
MIN_NOISE_HU = 1.0

# Thickness of the depth shells and width (Gaussian sigma) of the vote, in mm.
SHELL_MM = 1.0
VOTE_RADIUS_MM = 6.0
# A lesion is followed this way only when at least this fraction of the voxels
# within BORDER_BAND_MM of its warped border, on either side, can show a change.
# Below that the images hardly tell the lesion from its surroundings.
MIN_BORDER_EVIDENCE_FRACTION = 0.1
BORDER_BAND_MM = 3.0
# When less than this fraction of the warped mask remains, the lesion is gone,
# and voxels beside it that look grown are not a lesion of their own.
MIN_REMAINING_FRACTION = 0.05
# Voxels with less Gaussian weight of evidence than this (no evidence within
# about three vote widths) keep their class.
MIN_VOTE_WEIGHT = 1e-3


def refine_by_change(
    followup_hu: np.ndarray,
    warped_previous_hu: np.ndarray,
    warped_mask: np.ndarray,
    region: np.ndarray,
    spacing_zyx: np.ndarray,
) -> np.ndarray | None:
    """Return the follow-up mask of one lesion, on the follow-up grid, or None when
    too little of its border can show a change.

    ``warped_previous_hu`` is the previous image resampled onto the follow-up grid
    through the registration, and ``region`` the growth allowance around the
    non-empty ``warped_mask``: only voxels in it may join. The result is the part
    connected to what remains of the warped mask, and empty when less than
    ``MIN_REMAINING_FRACTION`` of it remains.
    """
    crop = _bounding_slices(region)
    sigma = SMOOTHING_MM / spacing_zyx
    before = ndimage.gaussian_filter(np.asarray(warped_previous_hu[crop], dtype=np.float32), sigma)
    now = ndimage.gaussian_filter(np.asarray(followup_hu[crop], dtype=np.float32), sigma)
    warped = warped_mask[crop]
    allowed = region[crop]

    outside_mm = ndimage.distance_transform_edt(~warped, sampling=spacing_zyx)
    inside_mm = ndimage.distance_transform_edt(warped, sampling=spacing_zyx)
    lesion_level = _nearest_level(before, inside_mm >= CORE_DEPTH_MM, warped, spacing_zyx)
    around = (outside_mm >= SURROUNDING_SHELL_MM[0]) & (outside_mm <= SURROUNDING_SHELL_MM[1])
    around_level = _nearest_level(before, around, ~warped, spacing_zyx)

    change = now - before
    noise = _change_noise(change, outside_mm)
    grew_shows, grew = _evidence(before, change, lesion_level, noise)
    shrank_shows, shrank = _evidence(before, change, around_level, noise)
    border = (outside_mm <= BORDER_BAND_MM) & (inside_mm <= BORDER_BAND_MM)
    can_show = np.where(warped, shrank_shows, grew_shows)
    if np.count_nonzero(can_show & border) < MIN_BORDER_EVIDENCE_FRACTION * np.count_nonzero(border):
        return None

    grown = _vote(grew_shows & allowed & ~warped, grew, allowed & ~warped, outside_mm, spacing_zyx)
    lost = _vote(shrank_shows & warped, shrank, warped, inside_mm, spacing_zyx)
    remaining = warped & ~lost
    if np.count_nonzero(remaining) < MIN_REMAINING_FRACTION * np.count_nonzero(warped):
        return np.zeros(warped_mask.shape, dtype=bool)
    lesion = connected_to(remaining | grown, remaining)
    lesion |= ndimage.binary_fill_holes(lesion) & warped

    result = np.zeros(warped_mask.shape, dtype=bool)
    result[crop] = lesion
    return result


def _nearest_level(hu: np.ndarray, source: np.ndarray, fallback: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Return, at every voxel, the smoothed level of ``hu`` over ``source`` at the nearest
    ``source`` voxel. An empty ``source`` is replaced by ``fallback``."""
    if not source.any():
        source = fallback
    if not source.any():
        return np.full(hu.shape, float(np.median(hu)), dtype=np.float32)
    sigma = LEVEL_SMOOTHING_MM / spacing_zyx
    weight = ndimage.gaussian_filter(source.astype(np.float32), sigma)
    total = ndimage.gaussian_filter(np.where(source, hu, 0.0).astype(np.float32), sigma)
    level = total / np.maximum(weight, 1e-6)
    _, nearest = ndimage.distance_transform_edt(~source, sampling=spacing_zyx, return_indices=True)
    return level[tuple(nearest)]


def _change_noise(change: np.ndarray, outside_mm: np.ndarray) -> float:
    """Return the robust standard deviation of the change away from the lesion."""
    far = change[outside_mm >= NOISE_DISTANCE_MM]
    if far.size == 0:
        far = change.ravel()
    spread = 1.4826 * float(np.median(np.abs(far - np.median(far))))
    return max(spread, MIN_NOISE_HU)


def _evidence(
    before: np.ndarray, change: np.ndarray, target_level: np.ndarray, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return (voxels that can show a change towards ``target_level``, voxels that show it)."""
    way = target_level - before
    shows = np.abs(way) >= MIN_CONTRAST_NOISE * noise
    changed = shows & (change * np.sign(way) > 0.5 * np.abs(way))
    return shows, changed


def _vote(
    can_show: np.ndarray, shows: np.ndarray, candidates: np.ndarray, depth_mm: np.ndarray, spacing_zyx: np.ndarray
) -> np.ndarray:
    """Return the ``candidates`` whose shell of ``depth_mm`` changed where they lie.

    A shell's voxel changes when, of the voxels around it in the same shell that can
    show a change, the Gaussian-weighted majority shows one.
    """
    sigma = VOTE_RADIUS_MM / spacing_zyx
    shell_of = np.ceil(depth_mm / SHELL_MM).astype(int)
    changed = np.zeros(candidates.shape, dtype=bool)
    for shell in range(1, int(shell_of[candidates].max(initial=0)) + 1):
        in_shell = candidates & (shell_of == shell)
        evidence = in_shell & can_show
        # On coarse voxels some shells contain no voxel, or none that can show a
        # change. Only a shell whose evidence shows no change ends the front.
        if not evidence.any():
            continue
        if not (evidence & shows).any():
            break
        weight = ndimage.gaussian_filter(evidence.astype(np.float32), sigma)
        votes = ndimage.gaussian_filter((evidence & shows).astype(np.float32), sigma)
        changed |= in_shell & (weight >= MIN_VOTE_WEIGHT) & (votes > 0.5 * weight)
    return changed


def connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Return the 26-connected components of ``mask`` that contain a voxel of ``seed``."""
    components, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    touching = np.unique(components[seed & mask])
    return np.isin(components, touching[touching > 0])


def _bounding_slices(mask: np.ndarray) -> tuple[slice, slice, slice]:
    indexes = np.argwhere(mask)
    low, high = indexes.min(axis=0), indexes.max(axis=0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))
