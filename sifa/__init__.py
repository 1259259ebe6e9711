"""SIFA: Stand-Alone Inter-Frame Attention in Video Models (CVPR 2022)."""
__version__ = "0.1.0"
