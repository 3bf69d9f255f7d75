"""Bedside mesh-nebuliser controller service."""

__version__ = "0.1.0"
