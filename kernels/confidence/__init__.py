"""Fused confidence threshold: softmax max/argmax, stop decision, compaction of the next active set."""
from .torch_twin import confidence_threshold_forward_torch

__all__ = ["confidence_threshold_forward_torch"]
