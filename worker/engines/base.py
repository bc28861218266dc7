"""The protocol every segmentation engine implements.

An engine takes a CT volume (SimpleITK image, float32 HU, any geometry) and
resolved prompts, and returns one boolean mask per lesion on the image's own
grid, as numpy arrays indexed [z, y, x]. The pipeline composes them into the
instance label map, measures and exports; engines never write files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import SimpleITK as sitk

from lesions.prompt_types import LesionPrompt

if TYPE_CHECKING:
    from worker.tracking.classical_tracker import TrackResult

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
    # How tracking jobs with this engine find lesions in a follow-up: "model" (the engine's
    # own tracking model) or "classical" (registration, then segmentation with the engine).
    tracking: str = "classical"
    tracking_detail: str = ""


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


class Tracker(Protocol):
    """A model that carries the lesions of one time point into the next by itself."""

    def track(self, prev_image: sitk.Image, prev_labels: np.ndarray, followup_image: sitk.Image, options: EngineOptions) -> TrackResult:
        """Return the follow-up label map with the previous ids and one LesionTrack per previous lesion."""
        ...


def model_tracker_of(engine: Engine) -> Tracker | None:
    """Return the engine's tracking model, or None when it has none.

    An engine offers one through an optional ``model_tracker()`` method, which
    raises EngineUnavailable when the model exists but cannot be loaded.
    """
    provider = getattr(engine, "model_tracker", None)
    return provider() if provider is not None else None
