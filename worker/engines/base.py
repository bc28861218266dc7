"""The protocol every segmentation engine implements.

An engine takes a CT volume (SimpleITK image, float32 HU, any geometry) and
resolved prompts, and returns one boolean mask per lesion on the image's own
grid, as numpy arrays indexed [z, y, x]. The pipeline composes them into the
instance label map, measures and exports; engines never write files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from lesions.prompt_types import LesionPrompt

ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class EngineOptions:
    """Per-job knobs; engines ignore what does not apply to them."""

    test_time_augmentation: bool | None = None  # None: the engine's default for its device


@dataclass(frozen=True)
class EngineStatus:
    """Status of one engine on this worker, as GET /v1/engines reports it."""

    name: str
    ready: bool
    device: str = "cpu"
    detail: str = ""
    folds: tuple[int, ...] = ()
    checkpoint: str | None = None


class Engine(Protocol):
    name: str

    def status(self) -> EngineStatus: ...

    def segment(
        self,
        image: sitk.Image,
        prompts: Sequence[LesionPrompt],
        options: EngineOptions,
        progress: ProgressCallback | None = None,
    ) -> dict[int, np.ndarray]:
        """Return {lesion_id: bool array [z, y, x]} on the grid of ``image``."""
        ...
