"""Build the segmentation network from the plans and load fold weights into it.

The plans name classes by dotted path (``torch.nn.modules.conv.Conv3d``). Only
paths under the packages in ``IMPORTABLE_PACKAGES`` are imported, so a plans
file cannot make the worker import arbitrary modules.

dynamic-network-architectures 0.3.1 registers some modules twice: the encoder
again as ``decoder.encoder``, and the conv and norm of each
``ConvDropoutNormReLU`` again as ``all_modules.0`` and ``all_modules.1``. Its
``state_dict`` therefore lists the same tensor under several keys. Weights are
loaded per parameter, accepting the value under any of its names.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch
from torch import nn

from .plans import ArchitectureSpec, ModelPlans, PlansError

IMPORTABLE_PACKAGES = ("torch.nn", "dynamic_network_architectures")


class WeightsError(ValueError):
    """A state dict does not fit the network built from the plans."""


def import_dotted_name(dotted_name: str) -> object:
    """Import ``package.module.Name`` if it lies under an allowed package."""
    if not any(dotted_name == p or dotted_name.startswith(p + ".") for p in IMPORTABLE_PACKAGES):
        raise PlansError(f"plans.json names {dotted_name!r}, which is outside the allowed packages {IMPORTABLE_PACKAGES}")

    # Walk from the longest importable module prefix, then resolve attributes.
    parts = dotted_name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            target = importlib.import_module(module_name)
        except ImportError:
            continue

        try:
            for attribute in parts[split:]:
                target = getattr(target, attribute)
        except AttributeError:
            continue
        return target

    raise PlansError(f"plans.json names {dotted_name!r}, which cannot be imported")


def build_network(plans: ModelPlans, device: torch.device | str = "cpu") -> nn.Module:
    """Instantiate the network of ``plans`` with deep supervision off, in eval mode.

    With ``device="meta"`` no memory is allocated, which is enough to inspect
    the state-dict layout of a large architecture.
    """
    network_class = import_dotted_name(plans.architecture.class_name)
    kwargs = _resolve_kwargs(plans.architecture)

    with torch.device(device):
        network = network_class(
            input_channels=plans.num_input_channels,
            num_classes=plans.num_classes,
            deep_supervision=False,
            **kwargs,
        )
    return network.eval()


def _resolve_kwargs(architecture: ArchitectureSpec) -> dict:
    kwargs = dict(architecture.kwargs)
    for name in architecture.kwargs_requiring_import:
        if kwargs.get(name) is not None:
            kwargs[name] = import_dotted_name(kwargs[name])
    return kwargs


def state_dict_aliases(network: nn.Module) -> dict[str, list[str]]:
    """Map each canonical parameter or buffer name to every state-dict key that refers to it."""
    canonical_by_tensor: dict[int, str] = {}
    for name, tensor in [*network.named_parameters(), *network.named_buffers()]:
        canonical_by_tensor[id(tensor)] = name

    aliases: dict[str, list[str]] = {name: [] for name in canonical_by_tensor.values()}
    for key, tensor in network.state_dict(keep_vars=True).items():
        canonical = canonical_by_tensor.get(id(tensor))
        if canonical is not None:
            aliases[canonical].append(key)
    return aliases


def load_weights(network: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state_dict`` into ``network``, accepting duplicated keys and dtype changes.

    Raises WeightsError naming the first missing, unexpected or wrongly shaped key.
    """
    aliases = state_dict_aliases(network)
    targets = {name: tensor for name, tensor in [*network.named_parameters(), *network.named_buffers()]}
    known_keys = {key for keys in aliases.values() for key in keys}

    unexpected = [key for key in state_dict if key not in known_keys]
    if unexpected:
        raise WeightsError(f"state dict has {len(unexpected)} keys that the network does not have, the first is {unexpected[0]!r}")

    with torch.no_grad():
        for canonical, keys in aliases.items():
            source_key = next((key for key in keys if key in state_dict), None)
            if source_key is None:
                raise WeightsError(f"state dict is missing {canonical!r}")

            value = state_dict[source_key]
            target = targets[canonical]
            if not isinstance(value, torch.Tensor):
                raise WeightsError(f"state dict entry {source_key!r} is a {type(value).__name__}, not a tensor")
            if tuple(value.shape) != tuple(target.shape):
                raise WeightsError(
                    f"state dict entry {source_key!r} has shape {tuple(value.shape)}, the network expects {tuple(target.shape)}"
                )
            target.copy_(value.to(dtype=target.dtype))
