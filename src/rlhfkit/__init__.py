"""rlhfkit: a complete RLHF system, from demonstrations to an aligned model."""

__version__ = "0.1.0"
