"""Plan and run the patches of one image for a list of prompts of the same model.

``plan_case`` encodes the prompts and places the patches without resampling
the image. ``predict_case`` builds the network inputs from the preprocessed
regions the patches need, runs all lesions' patches in shared batches and
returns the blended logits per lesion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lesions.prompt_types import LesionPrompt

from .plans import ModelPlans
from .prediction import predict_patches
from .preprocessing import CaseGeometry, PreprocessedImage, Triple, clip_window_to_image, compute_geometry
from .prompt_encoding import EncodedPrompt, encode_prompt
from .sliding_window import PatchBlender, covering_box, select_patch_starts


@dataclass(frozen=True)
class LesionPlan:
    """The patches predicted for one prompt. All indexes are padded preprocessed (z, y, x)."""

    prompt: EncodedPrompt
    patch_starts: list[Triple]
    coverage_start: Triple
    coverage_stop: Triple


@dataclass
class CasePlan:
    """One image with its geometry, lazily preprocessed CT and planned lesions."""

    geometry: CaseGeometry
    image: PreprocessedImage
    lesions: list[LesionPlan]

    def network_input(self, lesion_index: int, patch_start: Triple, lesion_ct: torch.Tensor | None = None) -> torch.Tensor:
        """Build the network input [CT, prompt] (2, *patch) of one patch, float32.

        ``lesion_ct`` is the padded CT over the lesion's coverage box
        (``lesion_coverage_ct``); passing it avoids resampling overlapping patches again.
        """
        lesion = self.lesions[lesion_index]
        patch_size = self.geometry.patch_size
        if lesion_ct is None:
            ct = self.image.padded_patch(patch_start, patch_size)
        else:
            offset = tuple(p - c for p, c in zip(patch_start, lesion.coverage_start))
            ct = lesion_ct[tuple(slice(o, o + n) for o, n in zip(offset, patch_size))]

        window_start = tuple(p - pad for p, pad in zip(patch_start, self.geometry.pad_before))
        prompt = lesion.prompt.render(window_start, patch_size, self.geometry.preprocessed_shape)
        return torch.stack([ct, prompt])

    def lesion_coverage_ct(self, lesion_index: int) -> torch.Tensor:
        """Return the padded CT over the box the lesion's patches cover."""
        lesion = self.lesions[lesion_index]
        size = tuple(b - a for a, b in zip(lesion.coverage_start, lesion.coverage_stop))
        return self.image.padded_patch(lesion.coverage_start, size)


def plan_case(image: np.ndarray, spacing_zyx: tuple[float, float, float], prompts: Sequence[LesionPrompt], plans: ModelPlans) -> CasePlan:
    """Encode the prompts of one image [z, y, x] and place their patches."""
    geometry = compute_geometry(image, spacing_zyx, plans)
    lesions = [plan_lesion(encode_prompt(prompt, geometry), geometry) for prompt in prompts]
    preprocessed = PreprocessedImage(image, geometry, plans.intensity)

    # Resampling region by region pays off unless the regions add up to more than the volume.
    region_voxels = sum(_voxels_inside_image(lesion, geometry) for lesion in lesions)
    if region_voxels > math.prod(geometry.preprocessed_shape):
        preprocessed.materialize()

    return CasePlan(geometry=geometry, image=preprocessed, lesions=lesions)


def plan_lesion(prompt: EncodedPrompt, geometry: CaseGeometry) -> LesionPlan:
    """Place the patches of one encoded prompt."""
    start, stop = prompt.bounding_box(geometry.preprocessed_shape)
    first = tuple(s + pad for s, pad in zip(start, geometry.pad_before))
    last = tuple(s - 1 + pad for s, pad in zip(stop, geometry.pad_before))

    patch_starts = select_patch_starts(first, last, geometry.padded_shape, geometry.patch_size)
    coverage_start, coverage_stop = covering_box(patch_starts, geometry.patch_size)
    return LesionPlan(prompt=prompt, patch_starts=patch_starts, coverage_start=coverage_start, coverage_stop=coverage_stop)


def predict_case(
    case: CasePlan,
    networks: Sequence[nn.Module],
    num_classes: int,
    device: torch.device,
    batch_size: int,
    mirror_axes: Sequence[int] | None,
    half_precision: bool,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Run every lesion's patches through the networks and yield (lesion index, blended logits).

    A lesion is yielded as soon as its last patch is blended, in lesion order,
    so only the lesions of the current batch are held in memory. Its logits are
    (classes, *coverage size), float32 on CPU. ``progress(done, total)`` is
    called after each batch with patch counts.
    """
    jobs = [(index, start) for index, lesion in enumerate(case.lesions) for start in lesion.patch_starts]
    last_job_of_lesion = {index: position for position, (index, _) in enumerate(jobs)}
    blenders: dict[int, PatchBlender] = {}
    coverage_ct: dict[int, torch.Tensor] = {}

    for batch_start in range(0, len(jobs), batch_size):
        batch_jobs = jobs[batch_start : batch_start + batch_size]

        inputs = []
        for index, patch_start in batch_jobs:
            if index not in coverage_ct:
                coverage_ct[index] = case.lesion_coverage_ct(index)
            inputs.append(case.network_input(index, patch_start, coverage_ct[index]))
        batch = torch.stack(inputs).to(device)

        logits = predict_patches(networks, batch, mirror_axes, half_precision).cpu()
        for (index, patch_start), patch_logits in zip(batch_jobs, logits):
            if index not in blenders:
                lesion = case.lesions[index]
                blenders[index] = PatchBlender(lesion.coverage_start, lesion.coverage_stop, num_classes)
            blenders[index].add(patch_start, patch_logits)

        batch_stop = batch_start + len(batch_jobs)
        if progress is not None:
            progress(batch_stop, len(jobs))

        # Hand over the lesions whose patches are all done, and free their CT.
        for index in sorted(i for i in blenders if last_job_of_lesion[i] < batch_stop):
            del coverage_ct[index]
            yield index, blenders.pop(index).logits()


def _voxels_inside_image(lesion: LesionPlan, geometry: CaseGeometry) -> int:
    size = tuple(b - a for a, b in zip(lesion.coverage_start, lesion.coverage_stop))
    start, stop, _ = clip_window_to_image(lesion.coverage_start, size, geometry)
    return math.prod(max(0, b - a) for a, b in zip(start, stop))
