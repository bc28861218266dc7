"""Longitudinal lesion tracking: registration between time points and per-lesion re-segmentation."""
