"""KubeRay manifests: they parse, carry what KubeRay v1.7 requires, and agree with the docs and jobs/.

There is no Kubernetes API server here, so the check is offline: a minimal JSON schema of the
RayCluster, RayJob and RayService fields reidray uses, written from the v1.7 CRDs (the same
required fields and types, unknown keys rejected as kubeconform's strict mode does), plus the
controller's own rules (name lengths, replica bounds) and reidray's (GPU group scaling from zero,
one image, one entrypoint). Each rule is shown to bite by removing or breaking a field.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reidray.config import load_job
from reidray.errors import ReidrayError
from reidray.models.weights import ENV_DIR as WEIGHTS_ENV
from reidray.serve.settings import TOKEN_ENV

ROOT = Path(__file__).resolve().parents[1]
FILES = {
    "RayCluster": ROOT / "manifests" / "raycluster.yaml",
    "RayJob": ROOT / "manifests" / "rayjob.yaml",
    "RayService": ROOT / "manifests" / "rayservice.yaml",
}
DOCS = ROOT / "docs" / "cluster.md"
DOCKERFILE = ROOT / "cluster" / "Dockerfile"
SERVE_IMPORT_PATH = "reidray.serve.app:build_app"
SERVE_CONFIG = ROOT / "reidray" / "serve" / "serve_config.yaml"  # the app's own config file
GPU = "nvidia.com/gpu"

# --- a minimal schema from the v1.7 CRDs ------------------------------------------------------

# Kubernetes resource quantities: an integer or a string such as "8", "500m", "32Gi".
QUANTITY = {
    "anyOf": [
        {"type": "integer"},
        {"type": "string", "pattern": r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$"},
    ]
}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "limits": {"type": "object", "additionalProperties": QUANTITY},
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "claims": {"type": "array"},
    },
}
CONTAINER = {
    "type": "object",
    "required": ["name", "image"],  # the CRD requires name; a Ray pod without an image cannot start
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "image": {"type": "string", "minLength": 1},
        "workingDir": {"type": "string"},
        "resources": RESOURCES,
        "volumeMounts": {
            "type": "array",
            "items": {"type": "object", "required": ["name", "mountPath"]},
        },
    },
}
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                "serviceAccountName": {"type": "string"},
                "tolerations": {"type": "array"},
            },
        },
    },
}
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
NON_NEGATIVE = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
HEAD_GROUP = {
    "type": "object",
    "required": ["template"],
    "additionalProperties": False,
    "properties": {
        "enableIngress": {"type": "boolean"},
        "headService": {"type": "object"},
        "ingressOptions": {"type": "object"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "rayStartParams": RAY_START_PARAMS,
        "resources": {"type": "object", "additionalProperties": {"type": "string"}},
        "serviceType": {"type": "string"},
        "template": POD_TEMPLATE,
    },
}
WORKER_GROUP = {
    "type": "object",
    "required": ["groupName", "maxReplicas", "minReplicas", "template"],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string", "minLength": 1},
        "idleTimeoutSeconds": INT32,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "maxReplicas": NON_NEGATIVE,
        "minReplicas": NON_NEGATIVE,
        "numOfHosts": INT32,
        "priority": INT32,
        "rayStartParams": RAY_START_PARAMS,
        "replicas": NON_NEGATIVE,
        "resources": {"type": "object", "additionalProperties": {"type": "string"}},
        "scaleStrategy": {"type": "object"},
        "suspend": {"type": "boolean"},
        "template": POD_TEMPLATE,
    },
}
CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "additionalProperties": False,
    "properties": {
        "authOptions": {"type": "object"},
        "autoscalerOptions": {
            "type": "object",
            "properties": {
                "idleTimeoutSeconds": INT32,
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "version": {"enum": ["v1", "v2"]},
            },
        },
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "headGroupSpec": HEAD_GROUP,
        "headServiceAnnotations": {"type": "object"},
        "historyServerOptions": {"type": "object"},
        "managedBy": {"type": "string"},
        "networkPolicy": {"type": "object"},
        "rayVersion": {"type": "string"},
        "suspend": {"type": "boolean"},
        "tlsOptions": {"type": "object"},
        "upgradeStrategy": {"type": "object"},
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
    },
}
RAYJOB_SPEC = {
    "type": "object",
    # The CRD requires nothing here; the controller needs rayClusterSpec (or a clusterSelector),
    # and a RayJob without an entrypoint runs nothing.
    "required": ["entrypoint", "rayClusterSpec"],
    "additionalProperties": False,
    "properties": {
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "backoffLimit": NON_NEGATIVE,
        "clusterSelector": {"type": "object"},
        "deletionStrategy": {"type": "object"},
        "entrypoint": {"type": "string", "minLength": 1},
        "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"},
        "entrypointResources": {"type": "string"},
        "jobId": {"type": "string"},
        "managedBy": {"type": "string"},
        "metadata": {"type": "object"},
        "preRunningDeadlineSeconds": {"type": "integer", "minimum": 1},
        "rayClusterSpec": CLUSTER_SPEC,
        "runtimeEnvYAML": {"type": "string"},
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "submitterConfig": {"type": "object"},
        "submitterPodTemplate": {"type": "object"},
        "suspend": {"type": "boolean"},
        "ttlSecondsAfterFinished": NON_NEGATIVE,
    },
}
RAYSERVICE_SPEC = {
    "type": "object",
    # The CRD requires the cluster; without serveConfigV2 the service serves nothing.
    "required": ["rayClusterConfig", "serveConfigV2"],
    "additionalProperties": False,
    "properties": {
        "deploymentUnhealthySecondThreshold": INT32,
        "excludeHeadPodFromServeSvc": {"type": "boolean"},
        "managedBy": {"type": "string"},
        "rayClusterConfig": CLUSTER_SPEC,
        "rayClusterDeletionDelaySeconds": NON_NEGATIVE,
        "serveConfigV2": {"type": "string", "minLength": 1},
        "serveService": {"type": "object"},
        "serviceUnhealthySecondThreshold": INT32,
        "suspend": {"type": "boolean"},
        "upgradeStrategy": {"type": "object"},
    },
}
# The controller rejects longer names: a RayJob's and a RayService's clusters get a suffix.
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
SPECS = {"RayCluster": CLUSTER_SPEC, "RayJob": RAYJOB_SPEC, "RayService": RAYSERVICE_SPEC}


def schema_for(kind: str) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    # DNS-1035 label, as the controller checks.
                    "name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": MAX_NAME[kind]}
                },
            },
            "spec": SPECS[kind],
        },
    }


# --- what the tests check -----------------------------------------------------------------------


def load(kind: str) -> dict:
    return yaml.safe_load(FILES[kind].read_text())


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


def project_image() -> str:
    """The image the Dockerfile's documented build command tags: every node and pod runs it."""
    match = re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", DOCKERFILE.read_text())
    assert match, "cluster/Dockerfile must document its build command with the image tag"
    return match.group(1)


def image_workdir() -> str:
    match = re.search(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "cluster/Dockerfile must set WORKDIR"
    return match.group(1)


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def gpus(group: dict) -> int:
    limits = [c.get("resources", {}).get("limits", {}) for c in group["template"]["spec"]["containers"]]
    return sum(int(limit.get(GPU, 0)) for limit in limits)


def problems(doc: Any) -> list[str]:
    """Everything wrong with one manifest: schema, controller rules, reidray's rules. Empty = good."""
    if not isinstance(doc, dict) or doc.get("kind") not in SPECS:
        return [f"not a RayCluster, RayJob or RayService: {str(doc)[:80]}"]
    kind = doc["kind"]
    validator = jsonschema.Draft202012Validator(schema_for(kind))
    found = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]
    if found:
        return found  # the rules below assume the shape the schema checks
    spec = cluster_spec(doc)
    # The controller's rules.
    for group in spec.get("workerGroupSpecs", []):
        low, high = group["minReplicas"], group["maxReplicas"]
        if low > high:
            found.append(f"worker group {group['groupName']}: minReplicas {low} > maxReplicas {high}")
        if "replicas" in group and not low <= group["replicas"] <= high:
            found.append(f"worker group {group['groupName']}: replicas outside [minReplicas, maxReplicas]")
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        params = group.get("rayStartParams", {})
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            found.append("resources set both in rayStartParams and resources")
    # reidray's: a CPU head, GPU workers the autoscaler grows from zero, one image, one data path.
    if not spec.get("enableInTreeAutoscaling"):
        found.append("enableInTreeAutoscaling must be true: GPU workers scale from zero")
    if gpus(spec["headGroupSpec"]):
        found.append("the head must not take a GPU")
    gpu_groups = [g for g in spec.get("workerGroupSpecs", []) if gpus(g) > 0]
    if not gpu_groups:
        found.append(f"no worker group asks for {GPU} in its container limits")
    for group in gpu_groups:
        if group["minReplicas"] != 0:
            found.append(f"worker group {group['groupName']} must scale from zero (minReplicas: 0)")
    image = project_image()
    for container in containers(spec):
        if container["image"] != image:
            found.append(f"container {container['name']} runs {container['image']}, not {image}")
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    if head.get("workingDir") != image_workdir():
        found.append(f"the head's workingDir must be the image's WORKDIR {image_workdir()} (jobs/ lives there)")
    data_root = load_job(ROOT / "jobs" / "paper.yaml").data_root
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        for container in group["template"]["spec"]["containers"]:
            if data_root not in [m["mountPath"] for m in container.get("volumeMounts", [])]:
                found.append(f"container {container['name']} does not mount the data root {data_root}")
            env = {e["name"]: e for e in container.get("env", [])}
            if not env.get(WEIGHTS_ENV, {}).get("value", "").startswith(f"{data_root}/"):
                found.append(f"container {container['name']} must set {WEIGHTS_ENV} to a folder under {data_root}")
            # Serve listens beyond loopback only with a token; it comes from a Secret, never a literal.
            if "secretKeyRef" not in env.get(TOKEN_ENV, {}).get("valueFrom", {}):
                found.append(f"container {container['name']} must take {TOKEN_ENV} from a Secret")
    if kind == "RayJob":
        found += entrypoint_problems(doc["spec"]["entrypoint"])
        if "runtimeEnvYAML" in doc["spec"] and not isinstance(yaml.safe_load(doc["spec"]["runtimeEnvYAML"]), dict):
            found.append("runtimeEnvYAML must hold a YAML mapping")
    if kind == "RayService":
        found += serve_config_problems(doc["spec"]["serveConfigV2"])
    return found


def entrypoint_problems(entrypoint: str) -> list[str]:
    argv = shlex.split(entrypoint)
    if argv[:4] != ["python", "-m", "reidray.run", "all"]:
        return [f"entrypoint must run `python -m reidray.run all`, not {entrypoint!r}"]
    if "--job" not in argv or argv.index("--job") + 1 >= len(argv):
        return ["entrypoint must name a job file with --job"]
    try:
        load_job(ROOT / argv[argv.index("--job") + 1])
    except ReidrayError as exc:  # the file is missing, or its line and reason
        return [f"entrypoint's job file: {exc}"]
    if "--out" not in argv or not re.match(r"^(s3|gs)://", argv[argv.index("--out") + 1]):
        return ["entrypoint must write to object storage (--out s3://... or gs://...): pods do not share disks"]
    return []


def serve_config_problems(text: str) -> list[str]:
    """Ray Serve's schema, the app's own args schema, and the deployments the app defines."""
    from ray.serve.schema import ServeDeploySchema

    from reidray.serve.settings import parse_settings

    try:
        config = ServeDeploySchema.model_validate(yaml.safe_load(text))
    except Exception as exc:  # pydantic's ValidationError, or YAML that is not a mapping
        return [f"serveConfigV2 does not validate with Ray Serve's schema: {exc}"]
    paths = [app.import_path for app in config.applications]
    if paths != [SERVE_IMPORT_PATH]:
        return [f"serveConfigV2 must run one application, {SERVE_IMPORT_PATH}; found {paths}"]
    app = config.applications[0]
    try:
        settings = parse_settings(app.args)
    except ReidrayError as exc:
        return [str(exc)]
    found = []
    if not re.match(r"^(s3|gs)://", settings.out):
        found.append("the service's out must be the bucket the RayJob writes to (s3:// or gs://)")
    if settings.num_gpus is None:
        found.append("num_gpus must be explicit: at deploy time a cluster scaled to zero shows no GPU")
    if settings.token is not None:
        found.append(f"a token in the manifest leaks it: use the Secret behind {TOKEN_ENV}")
    known = {d["name"] for d in yaml.safe_load(SERVE_CONFIG.read_text())["applications"][0].get("deployments", [])}
    unknown = {d.name for d in app.deployments} - known
    if unknown:
        found.append(f"serveConfigV2 configures deployments the app does not have: {sorted(unknown)}")
    return found


def keys(path: str) -> list[str | int]:
    """A dotted path's keys: list indices as numbers, ``{a.b/c}`` for a key holding dots."""
    return [braced or (int(plain) if plain.isdigit() else plain)
            for braced, plain in re.findall(r"\{([^}]*)\}|([^.]+)", path)]


def drop(doc: dict, path: str) -> dict:
    """A copy of ``doc`` without the field at a dotted path."""
    doc = copy.deepcopy(doc)
    *parents, last = keys(path)
    node = doc
    for key in parents:
        node = node[key]
    del node[last]
    return doc


def put(doc: dict, path: str, value: Any) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = keys(path)
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value
    return doc


# --- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FILES)
def test_each_manifest_is_one_valid_kuberay_object(kind):
    docs = list(yaml.safe_load_all(FILES[kind].read_text()))
    assert len(docs) == 1, f"{FILES[kind].name}: one object per file"
    assert docs[0]["kind"] == kind
    assert problems(docs[0]) == []


def test_the_job_and_the_service_run_the_same_cluster_as_the_raycluster():
    cluster = load("RayCluster")["spec"]
    assert load("RayJob")["spec"]["rayClusterSpec"] == cluster
    assert load("RayService")["spec"]["rayClusterConfig"] == cluster


def test_the_service_serves_the_embeddings_the_job_writes():
    argv = shlex.split(load("RayJob")["spec"]["entrypoint"])
    config = yaml.safe_load(load("RayService")["spec"]["serveConfigV2"])
    assert config["applications"][0]["args"]["out"] == argv[argv.index("--out") + 1]


def test_gpu_workers_can_hold_every_encoder_actor_the_paper_grid_asks_for():
    pool_max = load_job(ROOT / "jobs" / "paper.yaml").embed.concurrency[1]
    spec = load("RayCluster")["spec"]
    capacity = sum(g["maxReplicas"] * gpus(g) for g in spec["workerGroupSpecs"])
    assert capacity >= pool_max, (capacity, pool_max)


CLUSTER_PATHS = [
    "apiVersion", "kind", "metadata.name", "spec.headGroupSpec", "spec.headGroupSpec.template",
    "spec.headGroupSpec.template.spec", "spec.headGroupSpec.template.spec.containers",
    "spec.headGroupSpec.template.spec.containers.0.name", "spec.headGroupSpec.template.spec.containers.0.image",
    "spec.workerGroupSpecs.0.groupName", "spec.workerGroupSpecs.0.minReplicas", "spec.workerGroupSpecs.0.maxReplicas",
    "spec.workerGroupSpecs.0.template", "spec.workerGroupSpecs.0.template.spec.containers.0.image",
    # reidray's own requirements
    "spec.enableInTreeAutoscaling", f"spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.{{{GPU}}}",
    "spec.headGroupSpec.template.spec.containers.0.workingDir",
    "spec.workerGroupSpecs.0.template.spec.containers.0.volumeMounts",
    "spec.workerGroupSpecs.0.template.spec.containers.0.env",
    "spec.workerGroupSpecs.0.template.spec.containers.0.env.1",
]
REMOVALS = (
    [("RayCluster", p) for p in CLUSTER_PATHS]
    + [("RayJob", p) for p in ["spec.entrypoint", "spec.rayClusterSpec", "spec.rayClusterSpec.headGroupSpec",
                               "spec.rayClusterSpec.workerGroupSpecs.0.maxReplicas"]]
    + [("RayService", p) for p in ["spec.serveConfigV2", "spec.rayClusterConfig",
                                   "spec.rayClusterConfig.headGroupSpec.template"]]
)


@pytest.mark.parametrize(("kind", "path"), REMOVALS, ids=[f"{k}:{p}" for k, p in REMOVALS])
def test_removing_a_required_field_is_caught(kind, path):
    assert problems(drop(load(kind), path)), f"{kind} without {path} passed"


BREAKAGES = [
    ("RayCluster", "metadata.name", "x" * 54),
    ("RayJob", "metadata.name", "reidray-" + "x" * 40),
    ("RayCluster", "metadata.name", "ReidRay"),
    ("RayCluster", "spec.workerGroupSpecs.0.minReplicas", 9),
    ("RayCluster", "spec.workerGroupSpecs.0.maxReplicas", "8"),
    ("RayCluster", "spec.headGroupSpec.rayStartParams", {"num-cpus": 0}),
    ("RayCluster", "spec.enableInTreeAutoscalling", True),  # a typo: unknown keys are rejected
    ("RayCluster", "spec.headGroupSpec.template.spec.containers.0.image", "rayproject/ray:2.60.0-py311-gpu"),
    ("RayCluster", f"spec.headGroupSpec.template.spec.containers.0.resources.limits.{{{GPU}}}", 1),
    ("RayCluster", "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.memory", "32 GB"),
    ("RayJob", "spec.ttlSecondsAfterFinished", "600"),
    ("RayJob", "spec.submissionMode", "K8sJob"),
    ("RayJob", "spec.entrypoint", "python -m reidray.run all --job jobs/nope.yaml --out s3://b/p"),
    ("RayJob", "spec.entrypoint", "python -m reidray.run all --job jobs/paper.yaml"),
    ("RayJob", "spec.runtimeEnvYAML", {"pip": ["x"]}),  # must be a string holding YAML
    ("RayService", "spec.serveConfigV2", {"applications": []}),
    ("RayService", "spec.serveConfigV2", "applications:\n  - name: reidray\n    route_prefix: /\n"),
    ("RayService", "spec.serveConfigV2", "applications:\n  - name: reidray\n    import_path: reidray.serve:app\n"),
    ("RayService", "spec.serveConfigV2", "applications:\n  - name: reidray\n    import_path: reidray.serve.app:build_app\n    args: {out: s3://b/p, num_gpus: 1, nope: 1}\n"),
    ("RayService", "spec.serveConfigV2", "applications:\n  - name: reidray\n    import_path: reidray.serve.app:build_app\n    args: {out: /data/reid/out, num_gpus: 1}\n"),
    ("RayService", "spec.serveConfigV2", "applications:\n  - name: reidray\n    import_path: reidray.serve.app:build_app\n    args: {out: s3://b/p}\n"),
    ("RayService", "spec.serveConfigV2", "applications:\n  - name: reidray\n    import_path: reidray.serve.app:build_app\n    args: {out: s3://b/p, num_gpus: 1, token: hunter2}\n"),
    ("RayService", "spec.serveConfigV2", "applications:\n  - name: reidray\n    import_path: reidray.serve.app:build_app\n    args: {out: s3://b/p, num_gpus: 1}\n    deployments: [{name: Encoder}]\n"),
    ("RayCluster", "spec.headGroupSpec.template.spec.containers.0.env.1", {"name": TOKEN_ENV, "value": "hunter2"}),
]


@pytest.mark.parametrize(("kind", "path", "value"), BREAKAGES, ids=[f"{k}:{p}={v!r:.20}" for k, p, v in BREAKAGES])
def test_a_broken_field_is_caught(kind, path, value):
    assert problems(put(load(kind), path, value)), f"{kind} with {path}={value!r} passed"


def test_a_gpu_group_that_keeps_a_node_running_is_caught():
    group = load("RayCluster")["spec"]["workerGroupSpecs"][0]
    doc = put(load("RayCluster"), "spec.workerGroupSpecs.0", {**group, "minReplicas": 1, "replicas": 1})
    assert problems(doc) == [f"worker group {group['groupName']} must scale from zero (minReplicas: 0)"]


def test_the_docs_use_the_same_entrypoint_image_and_files():
    docs = DOCS.read_text()
    assert load("RayJob")["spec"]["entrypoint"] in docs
    assert f"docker build -f cluster/Dockerfile -t {project_image()} ." in docs
    for path in FILES.values():
        assert str(path.relative_to(ROOT)) in docs, path
    assert SERVE_IMPORT_PATH in docs


def test_the_image_is_built_on_the_ray_release_reidray_pins():
    import ray

    base = re.search(r"^FROM rayproject/ray:(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base, "cluster/Dockerfile must build on a rayproject/ray image"
    assert base.group(1).startswith(f"{ray.__version__}-py311"), base.group(1)
    assert f'"ray[data,serve]=={ray.__version__}"' in (ROOT / "pyproject.toml").read_text()
    assert load("RayCluster")["spec"]["rayVersion"] == ray.__version__
    # The job files and the package are in the image, where the head's workingDir points.
    assert re.search(r"^COPY .*\bjobs \./jobs$", DOCKERFILE.read_text(), re.MULTILINE)


def test_the_service_import_path_names_a_builder_in_the_package():
    import importlib

    module, attr = SERVE_IMPORT_PATH.split(":")
    assert callable(getattr(importlib.import_module(module), attr))
