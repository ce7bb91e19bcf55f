"""Per-mode pieces of the one epoch loop (`raytrain.epochs`): data-parallel (any world size) and pipeline."""
