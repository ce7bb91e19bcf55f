"""raytrain: train deep-learning models faster on Ray (Train for parallelism, Tune for search)."""

__version__ = "0.1.0"
