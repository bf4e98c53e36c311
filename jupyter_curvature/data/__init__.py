"""Datasets: the built-in offline digits, and torchvision datasets from a local folder."""

from .builtin import IMAGE_SHAPE, NUM_CLASSES, digits_dataset, digits_loader

__all__ = ["IMAGE_SHAPE", "NUM_CLASSES", "digits_dataset", "digits_loader"]
