"""Builders of lab artifacts from registries reachable here (Debian sources, PyPI)."""
