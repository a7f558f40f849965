"""Ray cluster-launcher configs (cluster/*.yaml): valid by Ray's own validation, offline, and shaped
the way reidray needs: a CPU head, GPU worker types that scale from zero, the reidray image on
every node, the datasets at the job file's data root, workers allowed to write to the bucket.

`ray up` has no dry run; Ray's `prepare_config` + `validate_config` is what it runs first, without
touching a cloud. Each rule is shown to bite by removing or breaking a field.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reidray.config import load_job
from reidray.models.weights import ENV_DIR as WEIGHTS_ENV

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"aws": ROOT / "cluster" / "aws.yaml", "gcp": ROOT / "cluster" / "gcp.yaml"}
DOCS = ROOT / "docs" / "cluster.md"

# GPUs per machine for the types the configs use (a type not listed here fails the test: add it
# with its real count). AWS: one instance type = a fixed set of GPUs.
AWS_GPUS = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.12xlarge": 4, "g5.48xlarge": 8,
            "g6.xlarge": 1, "g6.2xlarge": 1, "g6.12xlarge": 4, "g6e.xlarge": 1, "g6e.2xlarge": 1,
            "g6e.12xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8}
# GCP machine types that come with their GPUs (others take guestAccelerators).
GCP_BUNDLED_GPUS = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1,
                    "g2-standard-24": 2, "g2-standard-48": 4, "a2-highgpu-1g": 1, "a2-highgpu-2g": 2,
                    "a2-highgpu-4g": 4, "a2-highgpu-8g": 8}


def load(provider: str) -> dict:
    return yaml.safe_load(CONFIGS[provider].read_text())


def ray_validate(config: dict) -> None:
    """Ray's own checks, as `ray up` runs them before it calls the cloud; raises when invalid."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def project_image() -> str:
    match = re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", (ROOT / "cluster" / "Dockerfile").read_text())
    assert match, "cluster/Dockerfile must document its build command with the image tag"
    return match.group(1)


def policy_problems(config: dict) -> list[str]:
    """What reidray needs beyond Ray's schema. Empty = good."""
    found: list[str] = []
    provider = config["provider"]["type"]
    types = config["available_node_types"]
    head_name = config["head_node_type"]
    head = types[head_name]["resources"]
    # Explicit CPU and GPU per node type: inside a container Ray would guess them.
    if set(head) < {"CPU", "GPU"} or head["GPU"] != 0 or head["CPU"] < 1:
        found.append(f"head {head_name} must declare CPU >= 1 and GPU: 0, has {head}")
    workers = {name: t for name, t in types.items() if name != head_name}
    gpu_workers = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    if not gpu_workers:
        found.append("no worker type declares a GPU")
    for name, node in workers.items():
        if "CPU" not in node["resources"] or "GPU" not in node["resources"]:
            found.append(f"{name}: declare both CPU and GPU in resources")
        if node.get("min_workers", 0) != 0:
            found.append(f"{name}: min_workers must be 0 (GPU nodes only while there is work)")
        if node.get("max_workers", 0) < 1:
            found.append(f"{name}: max_workers must be at least 1")
    for name, node in gpu_workers.items():
        found += (aws_gpu_problems if provider == "aws" else gcp_gpu_problems)(name, node)
    paper = load_job(ROOT / "jobs" / "paper.yaml")
    capacity, nodes_left = 0, config["max_workers"]  # the most GPUs the autoscaler may start
    for node in sorted(gpu_workers.values(), key=lambda t: -t["resources"]["GPU"]):
        nodes = min(node.get("max_workers", 0), nodes_left)
        capacity, nodes_left = capacity + nodes * node["resources"]["GPU"], nodes_left - nodes
    if capacity < paper.embed.concurrency[1]:
        found.append(f"GPU capacity {capacity} below the paper grid's pool of {paper.embed.concurrency[1]} actors")
    image = config.get("docker", {}).get("image")
    if image != project_image():
        found.append(f"docker.image must be the reidray image {project_image()}, is {image}")
    options = " ".join(config.get("docker", {}).get("run_options", []))
    if f"{paper.data_root}:{paper.data_root}" not in options:
        found.append(f"the container must see the datasets at {paper.data_root} (docker run_options)")
    if f"--env {WEIGHTS_ENV}={paper.data_root}/" not in options:
        found.append(f"the container must find weights files under {paper.data_root} (--env {WEIGHTS_ENV}=...)")
    if not any(paper.data_root in c for c in config.get("initialization_commands", [])):
        found.append(f"initialization_commands must put the datasets at {paper.data_root} on every host")
    head_start = " ".join(config.get("head_start_ray_commands", []))
    if "--head" not in head_start or "--autoscaling-config=~/ray_bootstrap_config.yaml" not in head_start:
        found.append("head_start_ray_commands must start the head with the autoscaler's config")
    if "$RAY_HEAD_IP" not in " ".join(config.get("worker_start_ray_commands", [])):
        found.append("worker_start_ray_commands must join $RAY_HEAD_IP")
    return found


def aws_gpu_problems(name: str, node: dict) -> list[str]:
    config = node["node_config"]
    kind = config.get("InstanceType")
    found = []
    if kind not in AWS_GPUS:
        found.append(f"{name}: {kind} is not a GPU instance type this test knows")
    elif AWS_GPUS[kind] != node["resources"]["GPU"]:
        found.append(f"{name}: {kind} has {AWS_GPUS[kind]} GPUs, resources say {node['resources']['GPU']}")
    if "IamInstanceProfile" not in config:
        found.append(f"{name}: workers write to S3 and need an IamInstanceProfile")
    return found


def gcp_gpu_problems(name: str, node: dict) -> list[str]:
    config = node["node_config"]
    found = []
    attached = sum(a.get("acceleratorCount", 0) for a in config.get("guestAccelerators", []))
    count = attached or GCP_BUNDLED_GPUS.get(config.get("machineType"), 0)
    if count != node["resources"]["GPU"]:
        found.append(f"{name}: {config.get('machineType')} has {count} GPUs, resources say {node['resources']['GPU']}")
    if {"onHostMaintenance": "TERMINATE"} not in config.get("scheduling", []):
        found.append(f"{name}: GPU machines need scheduling onHostMaintenance: TERMINATE")
    scopes = [s for account in config.get("serviceAccounts", []) for s in account.get("scopes", [])]
    if "https://www.googleapis.com/auth/cloud-platform" not in scopes:
        found.append(f"{name}: workers write to Cloud Storage and need a service account with cloud-platform scope")
    return found


def edit(config: dict, path: str, value: Any = None, delete: bool = False) -> dict:
    """A copy with the field at a dotted path (``{name}`` for a key holding dots) set or removed."""
    config = copy.deepcopy(config)
    keys = [braced or (int(plain) if plain.isdigit() else plain)
            for braced, plain in re.findall(r"\{([^}]*)\}|([^.]+)", path)]
    node = config
    for key in keys[:-1]:
        node = node[key]
    if delete:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return config


def first_gpu_worker(config: dict) -> str:
    return next(n for n, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) >= 1)


# --- the tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", CONFIGS)
def test_ray_accepts_the_config(provider):
    config = load(provider)
    assert config["provider"]["type"] == provider
    ray_validate(config)


@pytest.mark.parametrize("provider", CONFIGS)
def test_the_config_has_what_reidray_needs(provider):
    assert policy_problems(load(provider)) == []


RAY_REJECTS = [
    ("provider", None, True),
    ("provider.type", None, True),
    ("head_node_type", None, True),
    ("available_node_types", None, True),
    ("available_node_types.{WORKER}.resources", None, True),
    ("available_node_types.{WORKER}.node_config", None, True),
    ("available_node_types.{WORKER}.resources.GPU", 0.5, False),  # Ray wants whole GPUs here
    ("available_node_types.{WORKER}.min_workers", "0", False),
    ("max_worker", 8, False),  # a typo: Ray forbids unknown top-level keys
    ("docker.imge", "x", False),
]


@pytest.mark.parametrize("provider", CONFIGS)
@pytest.mark.parametrize(("path", "value", "delete"), RAY_REJECTS, ids=[p for p, _, _ in RAY_REJECTS])
def test_ray_rejects_a_removed_or_broken_field(provider, path, value, delete):
    config = load(provider)
    path = path.replace("{WORKER}", "{" + first_gpu_worker(config) + "}")
    with pytest.raises((KeyError, ValueError, jsonschema.ValidationError)):
        ray_validate(edit(config, path, value, delete))


POLICY_BREAKS = {
    "aws": [
        ("docker.image", None, True),
        ("docker.image", "rayproject/ray:2.60.0-py311-gpu", False),
        ("docker.run_options", [], False),
        ("docker.run_options", ["--volume /data/reid:/data/reid:ro"], False),
        ("initialization_commands", [], False),
        ("available_node_types.head.resources.GPU", 1, False),
        ("available_node_types.head.resources.CPU", None, True),
        ("available_node_types.gpu_1x.min_workers", 1, False),
        ("available_node_types.gpu_1x.resources.GPU", 2, False),
        ("available_node_types.gpu_1x.node_config.InstanceType", "m6i.2xlarge", False),
        ("available_node_types.gpu_1x.node_config.IamInstanceProfile", None, True),
        ("max_workers", 1, False),  # 4 GPUs for a pool of 8
        ("head_start_ray_commands", ["ray start --head"], False),
    ],
    "gcp": [
        ("docker.image", None, True),
        ("available_node_types.head.resources.GPU", None, True),
        ("available_node_types.gpu_t4.node_config.guestAccelerators", None, True),
        ("available_node_types.gpu_t4.node_config.scheduling", None, True),
        ("available_node_types.gpu_t4.node_config.serviceAccounts", None, True),
        ("available_node_types.gpu_l4.node_config.machineType", "n1-standard-8", False),
        ("available_node_types.gpu_l4.min_workers", 2, False),
        ("worker_start_ray_commands", ["ray start"], False),
    ],
}


@pytest.mark.parametrize(
    ("provider", "path", "value", "delete"),
    [(p, *b) for p, breaks in POLICY_BREAKS.items() for b in breaks],
    ids=[f"{p}:{b[0]}" for p, breaks in POLICY_BREAKS.items() for b in breaks],
)
def test_a_config_reidray_cannot_use_is_caught(provider, path, value, delete):
    assert policy_problems(edit(load(provider), path, value, delete)), f"{provider} with {path} changed passed"


def test_the_job_runtime_env_is_valid_and_keeps_local_outputs_out_of_the_upload():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # Ray's own validation of the fields
    for folder in ("/.venv/", "/out/", "/data/"):
        assert folder in env["excludes"], folder


def test_the_docs_name_these_files_and_commands():
    docs = DOCS.read_text()
    for provider, path in CONFIGS.items():
        rel = path.relative_to(ROOT)
        for command in (f"ray up {rel}", f"ray dashboard {rel}", f"ray down {rel}"):
            assert command in docs, command
    assert "--working-dir . --runtime-env cluster/runtime_env.yaml" in docs
