"""Fixtures. Tests start their own Ray (and S3 server) and end only what they started.

Every test that uses a Ray fixture is marked `ray`, so `pytest -m "not ray"` is the fast loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import free_port, head
from raytrain.runtime import pythonpath_first, ray_env

ROOT = Path(__file__).resolve().parents[1]
RAY_FIXTURES = {"ray_local", "ray_head", "autoscaling_head", "job_head", "ray_head_with", "starts_ray"}

# The environment every Ray process of the session inherits (set before any starts): the CLI's bounded Ray
# Train waits, and a fake S3 account. S3 traffic goes to the test's own server on loopback
# (`s3_server`); the SDKs never ask a cloud metadata service (which would be another machine).
os.environ.update(ray_env())
S3_PORT = free_port()
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                  AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}", AWS_EC2_METADATA_DISABLED="true", NO_GCE_CHECK="true")
for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(key, None)


def pytest_collection_modifyitems(items):
    """Marks Ray tests, and runs the modules that use this process's session Ray (`ray_local`) after all
    others: once it is up, an in-process run joins it ("existing"), so the tests of the no-Ray path
    (`driver.without_ray`) must come first to take that path at all. Modules stay whole (their fixtures too)."""
    in_process_ray = set()
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if RAY_FIXTURES & names:
            item.add_marker(pytest.mark.ray)
        if "ray_local" in names:
            in_process_ray.add(item.module.__name__)
    items.sort(key=lambda item: item.module.__name__ in in_process_ray)  # stable: order kept within each group


@pytest.fixture(autouse=True)
def _no_ray_left_behind(request):
    """A test that does not hold the session's Ray must not leave one up in this process: later in-process runs
    would join it instead of taking their own path (and `ray_local` would inherit a Ray without the tests'
    PYTHONPATH). The leak fails the test that made it, and is ended (the test started it)."""
    if "ray_local" in request.fixturenames:
        yield
        return
    import sys

    before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    ray = sys.modules.get("ray")
    if not before and ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this test left a Ray running in the test process")


@pytest.fixture
def no_ray():
    """For tests of the no-Ray path: fails (not skips) if this process already holds a Ray, which would send
    the run down the "existing" path instead."""
    import ray

    assert not ray.is_initialized(), "a Ray is up in this process: the no-Ray path cannot be tested (test order?)"
    yield


@pytest.fixture(scope="session")
def ray_local():
    """A session-scoped local Ray with 2 CPUs (the CI machine's size), shut down at the end."""
    import ray

    if ray.is_initialized():  # someone else's Ray: use it, never end it
        yield ray
        return
    # As raytrain.runtime does for an embedded Ray: its processes inherit this environment (a job
    # runtime_env would keep tasks off the workers Ray pre-starts).
    with pythonpath_first(str(ROOT), str(Path(__file__).parent)):
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                 logging_level="WARNING")
        yield ray
        ray.shutdown()


@pytest.fixture
def starts_ray():
    """Marks a test that starts its own Ray (an embedded one in a subprocess): it is a `ray` test."""
    yield


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server (a real S3 API) on the loopback port the session's AWS_ENDPOINT_URL names; yields
    a function that creates a fresh bucket and returns its name."""
    import itertools

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    counter = itertools.count()

    def bucket() -> str:
        name = f"raytrain-test-{next(counter)}"
        client.create_bucket(Bucket=name)
        return name

    yield bucket
    server.stop()


@pytest.fixture
def exp_dict(tmp_path):
    """A small, fast experiment (digits, mlp, 1 worker) writing into tmp_path."""
    return {
        "name": "t", "seed": 0,
        "data": {"dataset": "digits"},
        "model": {"name": "mlp", "width": 0.5},
        "train": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}, "precision": "fp32"},
        "parallel": {"workers": 1, "cpus_per_worker": 1},
        "output": str(tmp_path / "runs"),
    }


@pytest.fixture
def ray_head(tmp_path):
    """A real Ray head on free ports (see `helpers.head`): yields (gcs_address, dashboard_url, env for clients)."""
    with head(tmp_path) as (address, url, env, _):
        yield address, url, env


@pytest.fixture
def ray_head_with(tmp_path):
    """`make(num_cpus) -> env`: a real head advertising more logical CPUs than this 2-core machine has (so
    Ray itself would place what raytrain's own limits must hold back); stopped after the test."""
    import contextlib

    stack = contextlib.ExitStack()
    yield lambda num_cpus: stack.enter_context(head(tmp_path, num_cpus=num_cpus))[2]
    stack.close()


@pytest.fixture
def autoscaling_head(tmp_path):
    """A head whose autoscaler runs clusters/local.yaml (fake multi-node provider): yields
    (env for clients, head log path). Its 1 CPU holds no trainer worker; pools come on demand."""
    import yaml

    port = free_port()
    config = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(config))
    with head(tmp_path, ("--autoscaling-config", str(tmp_path / "local.yaml")), {"RAY_FAKE_CLUSTER": "1"},
              port=port, num_cpus=1) as (_, _, env, log):
        yield env, log
