"""Turn blended logits on the preprocessed grid into a mask on the original image grid.

The logits are resampled trilinearly to the cropped original grid (the inverse
of the preprocessing resampling), the argmax is taken with ties going to
background, and the result is placed at the crop box of the original image.

Logits exist only inside the box covered by the lesion's patches. An original
voxel gets a prediction only when every tap it reads with a non-zero weight
lies in that box, so no value is extrapolated past the predicted tiles. All
other voxels are background. The official code reaches nearly the same result
by accident: it leaves uncovered logits as NaN, and NaN spreads through the
interpolation and loses the argmax. Extrapolating from the covered taps instead
would grow the mask by up to one original voxel at the coverage border.
"""

from __future__ import annotations

import numpy as np
import torch

from .preprocessing import CaseGeometry, Triple, clip_window_to_image
from .resampling import resample_region


def logits_to_mask(logits: torch.Tensor, coverage_start: Triple, geometry: CaseGeometry) -> np.ndarray:
    """Return a bool mask [z, y, x] of the original image from logits (classes, *coverage size).

    ``coverage_start`` is the padded preprocessed index of the logits' first voxel.
    """
    mask = np.zeros(geometry.original_shape, dtype=bool)

    # Drop the padding: keep the logits that lie inside the preprocessed image.
    coverage_size = tuple(logits.shape[1:])
    inside_start, inside_stop, offset = clip_window_to_image(coverage_start, coverage_size, geometry)
    if any(stop <= start for start, stop in zip(inside_start, inside_stop)):
        return mask
    inside = logits[(slice(None), *(slice(o, o + b - a) for o, a, b in zip(offset, inside_start, inside_stop)))]

    # Original voxels fully determined by the covered box, and the preprocessed voxels they read.
    maps = geometry.backward_maps
    output_ranges = [m.outputs_inside(a, b) for m, a, b in zip(maps, inside_start, inside_stop)]
    if any(stop <= start for start, stop in output_ranges):
        return mask
    source_ranges = [m.source_range(a, b) for m, (a, b) in zip(maps, output_ranges)]

    # Taps with weight 0 may lie one voxel past the covered box. Those taps read 0.
    # When downsampling, the taps may skip the outermost covered voxels.
    source = torch.zeros((logits.shape[0], *(b - a for a, b in source_ranges)), dtype=torch.float32)
    common = [(max(a, s), min(b, t)) for a, b, (s, t) in zip(inside_start, inside_stop, source_ranges)]
    target = tuple(slice(low - s, high - s) for (low, high), (s, _) in zip(common, source_ranges))
    selected = tuple(slice(low - a, high - a) for (low, high), a in zip(common, inside_start))
    source[(slice(None), *target)] = inside[(slice(None), *selected)].to(torch.float32)

    output_start = tuple(a for a, _ in output_ranges)
    output_stop = tuple(b for _, b in output_ranges)
    resampled = resample_region(source, tuple(s for s, _ in source_ranges), maps, output_start, output_stop)

    # torch.argmax returns the first maximum, so ties and uncovered voxels stay background.
    foreground = (resampled.argmax(dim=0) > 0).numpy()
    placement = tuple(
        slice(crop + start, crop + stop) for crop, start, stop in zip(geometry.crop_start, output_start, output_stop)
    )
    mask[placement] = foreground
    return mask
