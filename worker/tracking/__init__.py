"""Longitudinal lesion tracking: registration between time points and carrying each lesion into the follow-up."""
