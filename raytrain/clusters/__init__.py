"""Cluster files: `check` (Ray's launcher validator, KubeRay fields and CRD schema, security lints) and
`fit` (which node pool a run's workers land on, and how many trials run at once at max scale)."""
