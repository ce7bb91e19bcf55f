"""clusters/: every file passes `raytrain clusters check`; planted faults are caught with their key path;
`clusters fit` answers for a fitting and a non-fitting spec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from raytrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = sorted((ROOT / "clusters").glob("*.yaml"))
# KubeRay's CRDs are reference data outside the project (a user's clone has none): strict schema checks run
# when RAYTRAIN_KUBERAY_CRDS names a folder holding them (.ci/run sets it where CI keeps a copy), and say so
# when they skip.
CRDS = Path(os.environ["RAYTRAIN_KUBERAY_CRDS"]) if os.environ.get("RAYTRAIN_KUBERAY_CRDS") else None
HAVE_CRDS = CRDS is not None and (CRDS / "ray.io_rayclusters.yaml").is_file()
needs_crds = pytest.mark.skipif(not HAVE_CRDS, reason="KubeRay CRDs: set RAYTRAIN_KUBERAY_CRDS to a folder holding "
                                                      f"ray.io_rayclusters.yaml (now: {CRDS})")


def _check(capsys, *files, crds=True):
    rc = main(["clusters", "check", *map(str, files)] + (["--crds", str(CRDS)] if crds and HAVE_CRDS else []))
    return rc, capsys.readouterr().err.strip().splitlines()


def test_every_cluster_file_passes(capsys):
    assert {f.name for f in CLUSTERS} >= {"aws-gpu.yaml", "gcp-gpu.yaml", "kuberay-gpu.yaml", "kuberay-job.yaml", "local.yaml"}
    rc, errors = _check(capsys, *CLUSTERS)
    assert rc == 0 and errors == []


@needs_crds
def test_kuberay_files_pass_the_strict_crd_schema(capsys):
    rc, errors = _check(capsys, ROOT / "clusters" / "kuberay-gpu.yaml", ROOT / "clusters" / "kuberay-job.yaml")
    assert rc == 0 and errors == []


def _open_8265_aws(d):
    d["provider"]["security_group"]["IpPermissions"].append(
        {"FromPort": 8000, "ToPort": 9000, "IpProtocol": "TCP", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]})


def _open_8265_k8s(d):
    d["spec"]["networkPolicy"] = {"head": {"ingressRules": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                                                             "ports": [{"port": 8265}]}]}}


FAULTS = [
    ("aws-gpu.yaml", lambda d: d["available_node_types"]["gpu.small"].update(min_worker=1),
     "available_node_types.gpu.small: Additional properties are not allowed ('min_worker'"),
    ("kuberay-gpu.yaml", lambda d: d["spec"]["workerGroupSpecs"][1]["rayStartParams"].update({"num-gpus": "4"}),
     "spec.workerGroupSpecs[1].rayStartParams.num-gpus: 4 but"),
    ("kuberay-job.yaml", lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
     ["resources"]["limits"].update({"nvidia.com/gpu": "2"}), "spec.rayClusterSpec.workerGroupSpecs[0].rayStartParams.num-gpus"),
    ("aws-gpu.yaml", _open_8265_aws, "provider.security_group.IpPermissions[1]: open to the internet (0.0.0.0/0) on 8265"),
    ("kuberay-gpu.yaml", _open_8265_k8s, "spec.networkPolicy.head.ingressRules[0]: open to the internet (0.0.0.0/0) on 8265"),
    ("gcp-gpu.yaml", lambda d: d["provider"].update(private_key="-----BEGIN RSA PRIVATE KEY-----abc"),
     "provider.private_key: credential inline"),
    ("kuberay-gpu.yaml", lambda d: d["spec"]["headGroupSpec"].update(serviceType="LoadBalancer"),
     "spec.headGroupSpec.serviceType: LoadBalancer exposes the dashboard"),
    ("aws-gpu.yaml", lambda d: d["head_start_ray_commands"].__setitem__(1, "ray start --head --dashboard-host=0.0.0.0"),
     "head_start_ray_commands[1]: dashboard bound to all interfaces"),
    ("kuberay-gpu.yaml", lambda d: d["spec"].update(authOptions={"mode": "disabled"}), "spec.authOptions.mode: token authentication turned off"),
    ("local.yaml", lambda d: d.update(head_node_type="nope"), "head_node_type"),
]


@pytest.mark.parametrize("name,mutate,expected", FAULTS, ids=[f"{f[0]}:{f[2][:40]}" for f in FAULTS])
def test_planted_fault_is_caught_with_its_key_path(capsys, tmp_path, name, mutate, expected):
    d = yaml.safe_load((ROOT / "clusters" / name).read_text())
    mutate(d)
    bad = tmp_path / name
    bad.write_text(yaml.safe_dump(d))
    rc, errors = _check(capsys, bad)
    assert rc == 2
    assert any(expected in e for e in errors), errors
    assert all(e.startswith(str(bad)) and "(fix: " in e for e in errors)  # one line each: file, key path, fix


@needs_crds
def test_unknown_kuberay_field_caught_by_strict_schema(capsys, tmp_path):
    d = yaml.safe_load((ROOT / "clusters" / "kuberay-gpu.yaml").read_text())
    d["spec"]["workerGroupSpecs"][0]["replica"] = 1  # typo of replicas
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(d))
    rc, errors = _check(capsys, tmp_path / "k.yaml")
    assert rc == 2 and any("spec.workerGroupSpecs[0]: Additional properties are not allowed ('replica'" in e for e in errors)


def test_fit_names_the_pools_and_concurrency(capsys):
    rc = main(["clusters", "fit", str(ROOT / "search" / "digits-quick.yaml"), str(ROOT / "clusters" / "aws-gpu.yaml")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ray.head.cpu (head)    no: needs CPU 1 per worker, a node has 0" in out
    assert "gpu.small              fits: 4 worker(s)/node x 4 node(s) max = 16" in out
    assert "6 of 6 run(s) at once" in out


def test_fit_explains_a_spec_that_cannot_fit(capsys, tmp_path):
    spec = yaml.safe_load((ROOT / "search" / "digits-quick.yaml").read_text())
    spec["search"]["trial"] = {"workers": 5, "cpus_per_worker": 1, "use_gpu": True}
    spec["train"]["batch_size"] = 65  # divisible by 5 workers
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(spec))
    rc = main(["clusters", "fit", str(tmp_path / "big.yaml"), str(ROOT / "clusters" / "kuberay-job.yaml")])
    out = capsys.readouterr().out
    assert rc == 2
    assert "head                   no: needs CPU 1 per worker, a node has 0" in out
    assert "does not fit: 5 worker(s) per run but the cluster holds 4 at max scale" in out


def test_fit_counts_fractional_gpus(capsys, tmp_path):
    """Four quarter-GPU trials share one T4: gpu.small's 4 CPUs and 1 GPU hold 4 such trial workers per node."""
    spec = yaml.safe_load((ROOT / "search" / "digits-quick.yaml").read_text())
    spec["search"]["trial"] = {"workers": 1, "cpus_per_worker": 1, "use_gpu": True, "gpus_per_worker": 0.25}
    spec["search"]["samples"] = 20
    (tmp_path / "quarter.yaml").write_text(yaml.safe_dump(spec))
    assert main(["clusters", "fit", str(tmp_path / "quarter.yaml"), str(ROOT / "clusters" / "aws-gpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert "GPU 0.25" in out and "gpu.small              fits: 4 worker(s)/node x 4 node(s) max = 16" in out
    spec["search"]["trial"]["gpus_per_worker"] = 2.0  # no pool has two GPUs per node but the 8x one
    spec["search"]["trial"]["worker_resources"] = {"pool_gpu_small": 1}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(spec))
    assert main(["clusters", "fit", str(tmp_path / "two.yaml"), str(ROOT / "clusters" / "aws-gpu.yaml")]) == 2
    assert "gpu.small              no: needs GPU 2 per worker, a node has 1" in capsys.readouterr().out


def test_fractional_gpus_for_several_ranks_are_refused():
    from raytrain.errors import UserError
    from raytrain.configio import validate_experiment

    with pytest.raises(UserError, match="NCCL cannot put two ranks of one group on one GPU"):
        validate_experiment({"parallel": {"workers": 2, "use_gpu": True, "gpus_per_worker": 0.5}}, "t")
    with pytest.raises(UserError, match="gpus_per_worker 1.5: above 1 it must be a whole number"):
        validate_experiment({"parallel": {"workers": 1, "use_gpu": True, "gpus_per_worker": 1.5}}, "t")
    exp = validate_experiment({"parallel": {"workers": 1, "use_gpu": True, "gpus_per_worker": 0.25}}, "t")
    assert exp.parallel.bundle() == {"CPU": 1.0, "GPU": 0.25}
