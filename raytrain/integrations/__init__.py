"""Callbacks that send a run's metrics to the tools users already watch: `TensorBoard` and `MLflow`.

In the YAML (every worker builds them by name):

    callbacks:
      - raytrain.integrations:TensorBoard
      - {name: raytrain.integrations:MLflow, args: {tracking_uri: "http://127.0.0.1:5000"}}

or from Python: `raytrain.train(exp, callbacks=[TensorBoard(), MLflow()])`. Both work on rank 0 only, in
every mode (one process, a worker group, a search trial); neither knows Ray (a trial's folder comes through
`raytrain._ray_compat`). docs/callbacks.md has the events and how to write your own.
"""

from raytrain.integrations.mlflow import MLflow
from raytrain.integrations.tensorboard import TensorBoard

__all__ = ["MLflow", "TensorBoard"]
