"""Parallelism layouts, one file each (pure PyTorch). Data parallelism is Ray Train's DDP wrap in
`raytrain.worker`; pipeline (and DP x PP) lives in `pipeline.py`."""
