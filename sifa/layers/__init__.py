"""Layers to put SIFA into any video network (docs/layers.md): the inter-frame attention step as a module."""
from .sifa import OFFSET_OPTIONS, SIFA, difference_guide, host_sifa, shift_back, sifa_layers

__all__ = ["OFFSET_OPTIONS", "SIFA", "difference_guide", "host_sifa", "shift_back", "sifa_layers"]
