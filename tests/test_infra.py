"""Cluster manifests in infra/ parse, run specs that exist and validate, and agree with them on GPUs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

import batch_parse
from batch_parse.jobspec import cron_problems, load_job_spec, validate_job_spec

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
YAML_FILES = sorted(INFRA.rglob("*.yaml"))
# Which spec each Kubernetes manifest is sized for (the RayCluster hosts `submit`s of celebamask-hq).
SIZED_FOR = {"raycluster.yaml": "celebamask-hq.yaml", "rayjob.yaml": "celebamask-hq.yaml"}
ENTRYPOINT = re.compile(r"^batch-parse run --spec /jobs/(?P<file>[\w.-]+\.yaml)$")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kube(kind: str) -> tuple[Path, dict]:
    found = [(p, d) for p in (INFRA / "kuberay").glob("*.yaml") for d in _docs(p) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in infra/kuberay, found {len(found)}"
    return found[0]


def _cluster_spec(kind: str, doc: dict) -> dict:
    if kind == "RayCluster":
        return doc["spec"]
    return _job_spec(kind, doc)["rayClusterSpec"]


def _job_spec(kind: str, doc: dict) -> dict:
    return doc["spec"] if kind == "RayJob" else doc["spec"]["jobTemplate"]


def _quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_infra_has_the_expected_files():
    names = {str(p.relative_to(INFRA)) for p in INFRA.rglob("*") if p.is_file()}
    assert names >= {
        "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/raycronjob.yaml",
        "aws/cluster.yaml", "Dockerfile", "README.md",
    }  # fmt: skip


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_parses(path: Path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("kind", ["RayJob", "RayCronJob"])
def test_jobs_run_a_spec_from_jobs_folder_mounted_at_jobs(kind: str, tmp_path: Path):
    path, doc = _kube(kind)
    entrypoint = _job_spec(kind, doc)["entrypoint"]
    match = ENTRYPOINT.match(entrypoint)
    assert match, f"{path.name}: entrypoint {entrypoint!r} is not `batch-parse run --spec /jobs/<file>.yaml`"
    spec_file = REPO / "jobs" / match["file"]
    assert spec_file.is_file(), f"{path.name} runs {match['file']}, which jobs/ does not have"
    assert validate_job_spec(spec_file) == []
    assert shlex.split(entrypoint)[:3] == ["batch-parse", "run", "--spec"]

    # The driver runs on the head: the ConfigMap made from jobs/ must be mounted there at /jobs.
    head = _cluster_spec(kind, doc)["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"]: v for v in head.get("volumes", [])}
    mounts = [m for c in head["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/jobs"]
    assert mounts, f"{path.name}: nothing mounted at /jobs on the head"
    assert "configMap" in volumes[mounts[0]["name"]]


@pytest.mark.parametrize("kind", ["RayJob", "RayCronJob"])
def test_jobs_clean_up_and_give_up(kind: str):
    _, doc = _kube(kind)
    job = _job_spec(kind, doc)
    assert job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["backoffLimit"], int) and job["backoffLimit"] >= 0
    assert isinstance(job["activeDeadlineSeconds"], int) and job["activeDeadlineSeconds"] > 0


def test_cronjob_schedule_matches_its_spec():
    _, doc = _kube("RayCronJob")
    spec = load_job_spec(REPO / "jobs" / ENTRYPOINT.match(doc["spec"]["jobTemplate"]["entrypoint"])["file"])
    assert doc["spec"]["schedule"] == spec.schedule
    assert cron_problems(doc["spec"]["schedule"]) == []
    assert doc["spec"]["suspend"] is False
    # KubeRay 1.6's RayCronJob takes the RayJob spec directly under jobTemplate.
    assert set(doc["spec"]) <= {"schedule", "suspend", "jobTemplate"}
    assert "entrypoint" in doc["spec"]["jobTemplate"] and "spec" not in doc["spec"]["jobTemplate"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob", "RayCronJob"])
def test_kube_gpu_workers_fit_the_spec(kind: str):
    path, doc = _kube(kind)
    if kind == "RayCronJob":
        spec_name = ENTRYPOINT.match(doc["spec"]["jobTemplate"]["entrypoint"])["file"]
    else:
        spec_name = SIZED_FOR[path.name]
    options = load_job_spec(REPO / "jobs" / spec_name).options
    cluster = _cluster_spec(kind, doc)

    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"

    gpu_groups = []
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            gpu_groups.append((group, limits))
    assert gpu_groups, f"{path.name}: no worker group with nvidia.com/gpu limits"
    capacity = 0.0
    for group, limits in gpu_groups:
        gpus = float(limits["nvidia.com/gpu"])
        requests = group["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert float(requests["nvidia.com/gpu"]) == gpus, "GPU requests and limits must be equal"
        actors_per_pod = gpus / options.gpus_per_actor
        assert actors_per_pod >= 1 and actors_per_pod == int(actors_per_pod), (
            f"{path.name}: {gpus} GPU per pod does not hold whole actors of {options.gpus_per_actor} GPU"
        )
        # Each actor's CPUs, plus at least one CPU left to decode and encode images.
        assert _quantity(limits["cpu"]) >= actors_per_pod * options.cpus_per_actor + 1
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        capacity += group["maxReplicas"] * actors_per_pod
    assert capacity == options.max_actors, f"{path.name}: room for {capacity} actors, spec asks up to {options.max_actors}"


def test_images_are_the_one_the_dockerfile_builds():
    dockerfile = (INFRA / "Dockerfile").read_text()
    for path in (INFRA / "kuberay").glob("*.yaml"):
        images = set(re.findall(r"image:\s*(\S+)", path.read_text()))
        assert len(images) == 1, f"{path.name} uses several images: {images}"
        assert images.pop().endswith(f"/batch-parse:{batch_parse.__version__}")  # tagged with the package's version
    assert f"batch-parse:{batch_parse.__version__}" in dockerfile


def test_dockerfile_installs_the_package_on_the_ray_gpu_image():
    lines = [l.strip() for l in (INFRA / "Dockerfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == f"FROM rayproject/ray:{ray.__version__}-py311-gpu"
    text = "\n".join(lines)
    assert re.search(r"COPY .*pyproject\.toml", text) and re.search(r"COPY .*batch_parse", text)
    assert re.search(r"pip install [^\n]*\s\.(\s|$)", text), "the Dockerfile must pip install the package itself"
    # The GPU image needs CUDA torch: no CPU wheel index, no +cpu pin.
    assert "whl/cpu" not in text and "+cpu" not in text and not re.search(r"torch==", text)


def test_aws_launcher_has_gpu_spot_workers_for_the_spec():
    config = _docs(INFRA / "aws" / "cluster.yaml")[0]
    options = load_job_spec(REPO / "jobs" / "celebamask-hq.yaml").options
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    (worker,) = workers
    assert worker["node_config"]["InstanceType"] == "g5.xlarge"
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert worker["resources"]["GPU"] >= 1
    actors_per_node = worker["resources"]["GPU"] / options.gpus_per_actor
    assert worker["resources"]["CPU"] >= actors_per_node * options.cpus_per_actor + 1
    assert worker["min_workers"] <= worker["max_workers"] <= config["max_workers"]
    assert worker["max_workers"] * actors_per_node == options.max_actors
    setup = " ".join(config["setup_commands"])
    assert f"ray[default]=={ray.__version__}" in setup
    assert "/home/ubuntu/batch-parse" in setup and config["file_mounts"]["/home/ubuntu/batch-parse"] == "."


def test_readme_names_every_file():
    readme = (INFRA / "README.md").read_text()
    for path in INFRA.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(INFRA)) in readme, f"infra/README.md does not mention {path.relative_to(INFRA)}"
