"""Parse and validate the nnU-Net ``plans.json`` of a LesionLocator model.

Only the ``3d_fullres`` configuration of the official release is supported: CT
normalisation, torch trilinear resampling without a separate z axis, and no
axis transposition. Anything else is rejected with a ``PlansError`` instead of
being run with the wrong preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_RESAMPLING_FUNCTION = "resample_torch_fornnunet"


class PlansError(ValueError):
    """The plans or dataset description cannot be used by this engine."""


@dataclass(frozen=True)
class CTIntensityProperties:
    """Clip range and z-score parameters of nnU-Net's CTNormalization."""

    lower_bound: float
    upper_bound: float
    mean: float
    std: float


@dataclass(frozen=True)
class ArchitectureSpec:
    """Network class and constructor arguments as written in the plans."""

    class_name: str
    kwargs: dict[str, Any]
    kwargs_requiring_import: tuple[str, ...]


@dataclass(frozen=True)
class ModelPlans:
    """Inference settings from ``plans.json`` and ``dataset.json``."""

    configuration: str
    patch_size: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    intensity: CTIntensityProperties
    architecture: ArchitectureSpec
    num_image_channels: int
    num_classes: int

    @property
    def num_input_channels(self) -> int:
        # LesionLocator appends one prompt channel to the image channels.
        return self.num_image_channels + 1


def read_json(path: Path) -> dict:
    """Read a JSON object from ``path``.

    Raise PlansError naming the file when it is missing or invalid.
    """
    if not path.is_file():
        raise PlansError(f"{path} is missing")

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlansError(f"{path} is not valid JSON: {error}") from error

    if not isinstance(document, dict):
        raise PlansError(f"{path} must contain a JSON object, found {type(document).__name__}")
    return document


def parse_model_plans(plans: dict, dataset: dict, configuration: str = "3d_fullres") -> ModelPlans:
    """Extract and check the inference settings of one configuration."""
    try:
        config = plans["configurations"][configuration]
    except (KeyError, TypeError) as error:
        raise PlansError(f"plans.json has no configuration {configuration!r}") from error

    _check_supported_preprocessing(plans, config)

    channel_names = dataset.get("channel_names") or dataset.get("modality")
    labels = dataset.get("labels")
    if not isinstance(channel_names, dict) or len(channel_names) != 1:
        raise PlansError(f"dataset.json must list exactly one input channel (CT), found {channel_names!r}")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise PlansError(f"dataset.json must list background and lesion labels, found {labels!r}")

    patch_size = _int_triple(config.get("patch_size"), "patch_size")
    spacing = _float_triple(config.get("spacing"), "spacing")
    intensity = _ct_intensity_properties(plans)
    architecture = _architecture_spec(config)

    return ModelPlans(
        configuration=configuration,
        patch_size=patch_size,
        spacing_zyx=spacing,
        intensity=intensity,
        architecture=architecture,
        num_image_channels=len(channel_names),
        num_classes=len(labels),
    )


def _check_supported_preprocessing(plans: dict, config: dict) -> None:
    transpose = plans.get("transpose_forward", [0, 1, 2])
    if list(transpose) != [0, 1, 2]:
        raise PlansError(f"transpose_forward {transpose} is not supported. Only [0, 1, 2] is supported.")

    schemes = config.get("normalization_schemes")
    if schemes != ["CTNormalization"]:
        raise PlansError(f"normalization_schemes {schemes} is not supported. Only ['CTNormalization'] is supported.")

    for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
        function = config.get(key)
        if function != SUPPORTED_RESAMPLING_FUNCTION:
            raise PlansError(f"{key} {function!r} is not supported. Only {SUPPORTED_RESAMPLING_FUNCTION!r} is supported.")

        # force_separate_z false means one trilinear pass over all three axes.
        kwargs = config.get(f"{key}_kwargs") or {}
        if kwargs.get("force_separate_z", None) is not False:
            raise PlansError(f"{key}_kwargs must set force_separate_z to false, found {kwargs.get('force_separate_z')!r}")


def _ct_intensity_properties(plans: dict) -> CTIntensityProperties:
    try:
        properties = plans["foreground_intensity_properties_per_channel"]["0"]
        return CTIntensityProperties(
            lower_bound=float(properties["percentile_00_5"]),
            upper_bound=float(properties["percentile_99_5"]),
            mean=float(properties["mean"]),
            std=float(properties["std"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise PlansError(f"plans.json is missing the CT intensity properties of channel 0: {error!r}") from error


def _architecture_spec(config: dict) -> ArchitectureSpec:
    architecture = config.get("architecture")
    if not isinstance(architecture, dict):
        raise PlansError("plans.json configuration has no 'architecture' section")

    try:
        return ArchitectureSpec(
            class_name=str(architecture["network_class_name"]),
            kwargs=dict(architecture["arch_kwargs"]),
            kwargs_requiring_import=tuple(architecture.get("_kw_requires_import", ())),
        )
    except (KeyError, TypeError) as error:
        raise PlansError(f"plans.json architecture section is incomplete: {error!r}") from error


def _int_triple(value: Any, name: str) -> tuple[int, int, int]:
    if not isinstance(value, list) or len(value) != 3:
        raise PlansError(f"{name} must be a list of three integers, found {value!r}")
    return int(value[0]), int(value[1]), int(value[2])


def _float_triple(value: Any, name: str) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise PlansError(f"{name} must be a list of three numbers, found {value!r}")
    return float(value[0]), float(value[1]), float(value[2])
