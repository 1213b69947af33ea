"""Revisions, one branch per flow (see the package docstring)."""
