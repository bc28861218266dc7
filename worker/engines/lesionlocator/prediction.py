"""Run batches of patches through every fold, with optional mirroring test-time augmentation.

Folds and mirrorings are averaged per patch, before Gaussian blending. Because
blending is linear, this equals the official order (blend each fold, then
average the folds) up to rounding.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence

import torch
from torch import nn

# Fraction of the memory that is free when a call starts that the patch batches may use.
CUDA_MEMORY_FRACTION = 0.5
CPU_MEMORY_FRACTION = 0.25
FALLBACK_CPU_BUDGET_BYTES = 2 * 1024**3


def mirror_axis_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Return every non-empty subset of the spatial axes to flip, smallest subsets first."""
    if not mirror_axes:
        return []
    axes = tuple(mirror_axes)
    return [combo for size in range(1, len(axes) + 1) for combo in itertools.combinations(axes, size)]


@torch.inference_mode()
def predict_patches(
    networks: Sequence[nn.Module],
    batch: torch.Tensor,
    mirror_axes: Sequence[int] | None,
    half_precision: bool,
) -> torch.Tensor:
    """Return the fold- and mirror-averaged logits (B, classes, *patch) of a batch, float32 on the batch's device.

    ``mirror_axes`` are spatial axes (0 = z, 1 = y, 2 = x). None or empty disables mirroring.
    """
    combinations = mirror_axis_combinations(mirror_axes)
    total = None
    for network in networks:
        predictions = [_forward(network, batch, half_precision)]
        for axes in combinations:
            dims = [axis + 2 for axis in axes]
            flipped = _forward(network, torch.flip(batch, dims), half_precision)
            predictions.append(torch.flip(flipped, dims))

        for prediction in predictions:
            total = prediction if total is None else total + prediction

    return total / (len(networks) * (1 + len(combinations)))


def _forward(network: nn.Module, batch: torch.Tensor, half_precision: bool) -> torch.Tensor:
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.float16)
        if half_precision and batch.device.type == "cuda"
        else contextlib.nullcontext()
    )
    with autocast:
        return network(batch).float()


def bytes_per_patch(network: nn.Module, patch_size: Sequence[int], half_precision: bool) -> int:
    """Estimate the activation memory of one patch in one forward pass.

    The estimate is the network's total conv feature-map size times the element
    size. NOTE: it is an estimate, not an upper bound. For ResEnc-L at
    160x224x224 in float32 it gives 8.5 GB, the same as the max RSS measured for
    one such forward pass on CPU with torch 2.13.
    """
    element_size = 2 if half_precision else 4
    compute_size = getattr(network, "compute_conv_feature_map_size", None)
    if compute_size is None:
        # Unknown architecture: assume 64 feature maps at full resolution.
        return 64 * int(torch.tensor(list(patch_size)).prod()) * element_size
    return int(compute_size(tuple(patch_size))) * element_size


def default_memory_budget(device: torch.device) -> int:
    """Return the bytes the patch batches may use: a fraction of the currently free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_FRACTION)

    available = _available_system_memory()
    if available is None:
        return FALLBACK_CPU_BUDGET_BYTES
    return int(available * CPU_MEMORY_FRACTION)


def batch_size_for_budget(patch_bytes: int, budget_bytes: int, max_batch_size: int) -> int:
    """Return how many patches fit in the budget, at least 1 and at most ``max_batch_size``."""
    fitting = budget_bytes // max(1, patch_bytes)
    return int(max(1, min(max_batch_size, fitting)))


def _available_system_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
