"""LesionLocator (CVPR 2025) promptable lesion segmentation engine."""

from .engine import LesionLocatorEngine

__all__ = ["LesionLocatorEngine"]
