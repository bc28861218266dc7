"""The uniGradICON registration network of LesionLocatorTrack, built without its weight download.

LesionLocatorTrack registers the baseline to the follow-up with uniGradICON
(Tian et al., 2024) at 175 x 175 x 175 voxels. The architecture comes from the
``unigradicon`` package (1.0.6, with ``icon_registration`` 1.1.9, the versions
the official LesionLocator run used): ``make_network`` builds it with random
weights, and the checkpoint's ``reg_net.*`` entries replace them. Nothing is
downloaded.

Coordinates are icon_registration's: a field maps each voxel of the fixed image
(the follow-up) to a position in the moving image (the baseline), with every
axis scaled to [0, 1] (spacing ``1 / (size - 1)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# The official tracking trainer builds uniGradICON for inputs of this shape (batch, channel, z, y, x).
REGISTRATION_INPUT_SHAPE = (1, 1, 175, 175, 175)
STATE_DICT_PREFIX = "reg_net."


class RegistrationUnavailable(RuntimeError):
    """The unigradicon package is missing or cannot be imported."""


def build_registration_network() -> nn.Module:
    """Build uniGradICON with random weights and the official last refinement step, in eval mode."""
    try:
        # unigradicon imports itk and icon_registration's training modules, which take a few seconds.
        from unigradicon import make_network
    except ImportError as error:
        raise RegistrationUnavailable(f"the unigradicon package cannot be imported ({error}); install the worker extra") from error

    network = make_network(list(REGISTRATION_INPUT_SHAPE), include_last_step=True)
    return network.eval()


def registration_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the checkpoint's ``reg_net.*`` entries without the prefix."""
    return {key.removeprefix(STATE_DICT_PREFIX): value for key, value in state_dict.items() if key.startswith(STATE_DICT_PREFIX)}


def displacement_field(network: nn.Module, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Return ``phi_AB`` on the identity grid, (1, 3, 175, 175, 175), for moving and fixed images (1, 1, 175, 175, 175).

    The official code calls the whole GradientICON module, which also registers
    the pair the other way round and computes a loss that inference never reads.
    Only the forward direction is computed here, which halves the work.
    """
    identity = network.identity_map
    # icon_registration shortcuts composing with the identity grid when this tag is set.
    identity.isIdentity = True
    phi = network.regis_net(moving, fixed)
    return phi(identity)


def warp_nearest(mask: torch.Tensor, field: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """Warp a mask (1, 1, *shape) with ``field`` by nearest-neighbour sampling; samples outside the image are 0."""
    from icon_registration.mermaidlite import compute_warped_image_multiNC

    return compute_warped_image_multiNC(mask, field, network.spacing, spline_order=0, zero_boundary=True)
