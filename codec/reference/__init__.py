"""Torch/numpy reference implementations: the spec, and the CPU path."""
