"""Per-mode pieces of the one epoch loop (`raytrain.loop`): data-parallel (any world size) and pipeline."""
