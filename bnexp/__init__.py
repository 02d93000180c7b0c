"""bnexp: what does BatchNorm's per-channel statistic buy you? A training-stability harness."""
__version__ = "0.1.0"
