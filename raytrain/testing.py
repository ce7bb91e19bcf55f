"""pytest plugin for raytrain users (registered as the `raytrain` pytest11 entry point: installed with
raytrain, active in every pytest run of that environment). Two fixtures:

    raytrain_ray          a session-wide local Ray (2 CPUs), or the one already running; ended at the end
                          of the session only if this fixture started it
    raytrain_experiment   a factory of tiny experiments: sklearn's bundled digits, 1 in-process worker,
                          1 epoch, fp32, writing under the test's tmp_path; keyword arguments override
                          dotted keys (`train__epochs=2` sets train.epochs)

    def test_my_model_learns(raytrain_ray, raytrain_experiment):
        result = raytrain.train(raytrain_experiment(train__epochs=2), model=my_package.models.small)
        assert result.status == "completed" and result.metrics["val_accuracy"] > 0.5

Importing this module is cheap: torch and Ray load only when a fixture is used.
"""

from __future__ import annotations

import pytest

TINY = {
    "name": "tiny", "seed": 0, "data": {"dataset": "digits"}, "model": {"name": "mlp", "width": 0.5},
    "train": {"epochs": 1, "batch_size": 64, "precision": "fp32", "optimizer": {"name": "sgd", "lr": 0.05}},
    "parallel": {"workers": 1, "cpus_per_worker": 1},
}


@pytest.fixture(scope="session")
def raytrain_ray():
    """A local Ray for the whole test session (yields the `ray` module)."""
    import ray

    from raytrain.runtime import ray_env, scoped_env

    if ray.is_initialized():
        yield ray
        return
    with scoped_env(ray_env()):
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture
def raytrain_experiment(tmp_path):
    """`make(**patch) -> raytrain.Experiment`: a tiny experiment, `a__b=value` setting key a.b."""
    import copy

    from raytrain.configio import set_dotted, validate_experiment

    def make(**patch):
        raw = copy.deepcopy(TINY)
        raw["output"] = str(tmp_path / "runs")
        for dotted, value in patch.items():
            set_dotted(raw, dotted.replace("__", "."), value)
        return validate_experiment(raw, "raytrain_experiment")

    return make
