"""The model zoo."""

from .small import MLP, SmallCNN

__all__ = ["MLP", "SmallCNN"]
