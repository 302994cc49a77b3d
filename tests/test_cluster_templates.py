"""The cluster templates validate and fit the config they are for.

The Ray cluster launcher YAML goes through Ray's own `prepare_config` + `validate_config` (the
JSON schema `ray up` applies). The KubeRay manifests are checked against the field names of the
ray.io/v1 CRDs (RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, RayJobSpec as KubeRay's Go types
declare them) and the core Kubernetes fields they use. Then: the nodes they describe hold
configs/gpt-1b-multinode.yaml's workers in TP groups per node, and the run settings they pass
satisfy the multi-node storage rules.
"""

from __future__ import annotations

import re
import shlex
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from cluster import placement, storage
from pipeline import config as config_io
from pipeline import registry

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "cluster" / "templates"
MULTINODE = REPO / "configs" / "gpt-1b-multinode.yaml"

# ray.io/v1 field names (KubeRay ray-operator/apis/ray/v1/{raycluster,rayjob}_types.go).
RAY_CLUSTER_SPEC = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions",
}  # fmt: skip
HEAD_GROUP_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_SPEC = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
RAY_JOB_SPEC = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}  # fmt: skip
# The core/v1 fields these manifests use (a subset of PodSpec, Container, Volume).
POD_SPEC = {"containers", "volumes", "tolerations", "nodeSelector", "serviceAccountName", "affinity"}
CONTAINER = {"name", "image", "command", "args", "env", "ports", "resources", "volumeMounts", "workingDir"}
VOLUME = {"name", "persistentVolumeClaim", "emptyDir", "configMap", "secret", "hostPath"}
# EC2 RunInstances parameters the launcher passes through as node_config.
EC2_NODE_CONFIG = {
    "InstanceType", "ImageId", "BlockDeviceMappings", "InstanceMarketOptions", "IamInstanceProfile",
    "KeyName", "SubnetIds", "SecurityGroupIds", "Placement", "NetworkInterfaces", "TagSpecifications",
}  # fmt: skip
# Per instance type: (vCPUs, GPUs), from the EC2 instance type pages.
EC2_SIZES = {
    "p5.48xlarge": (192, 8),
    "p4d.24xlarge": (96, 8),
    "g5.48xlarge": (192, 8),
    "g5.12xlarge": (48, 4),
    "m6i.4xlarge": (16, 0),
}


def multinode_config(*overrides: str):
    return config_io.load([MULTINODE], list(overrides), registry.stages())


def test_launcher_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((TEMPLATES / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(raw))  # raises jsonschema.ValidationError on an unknown or mistyped field
    assert raw["head_node_type"] in raw["available_node_types"]
    for name, node_type in raw["available_node_types"].items():
        assert set(node_type["node_config"]) <= EC2_NODE_CONFIG, name
        assert node_type["node_config"]["InstanceType"] in EC2_SIZES
    broken = {**raw, "max_worker": 4}
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(broken))


def test_launcher_cluster_holds_the_multinode_config():
    raw = yaml.safe_load((TEMPLATES / "aws-gpu.yaml").read_text())
    nodes = []
    for name, node_type in raw["available_node_types"].items():
        cpus, gpus = EC2_SIZES[node_type["node_config"]["InstanceType"]]
        cpus = node_type["resources"].get("CPU", cpus)
        count = 1 if name == raw["head_node_type"] else node_type["min_workers"]
        assert name == raw["head_node_type"] or node_type["min_workers"] == node_type["max_workers"]
        nodes += [placement.Node(f"{name}-{i}", "", cpus, gpus) for i in range(count)]
    config = multinode_config("run.tracking_uri=http://head:5000")
    for name, stage in registry.stages().items():
        if name in config.stages:
            res = stage.resources(config.stages[name])
            assert placement.problem(name, res, nodes) is None, name
    assert storage.problems(config.run, len(nodes)) == []
    # With 4-GPU nodes (g5.12xlarge) tp=8 could not stay inside a node:
    small = [placement.Node(f"g{i}", "", 48, 4) for i in range(8)]
    assert "groups of 8" in placement.problem("pretrain", placement.Resources(8, 1, 32, group=8), small)


def kuberay_documents() -> dict[str, dict]:
    found = {}
    for path in ("kuberay-cluster.yaml", "kuberay-job.yaml"):
        for doc in yaml.safe_load_all((TEMPLATES / path).read_text()):
            if doc:
                found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def check_pod_template(template: dict, where: str) -> None:
    assert set(template) <= {"metadata", "spec"}, where
    spec = template["spec"]
    assert set(spec) <= POD_SPEC, (where, set(spec) - POD_SPEC)
    mounts = set()
    for container in spec["containers"]:
        assert set(container) <= CONTAINER, (where, set(container) - CONTAINER)
        mounts |= {m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for volume in spec.get("volumes", []):
        assert set(volume) <= VOLUME, (where, volume)
    assert mounts <= volumes, f"{where}: mounts {mounts - volumes} have no volume"


def test_kuberay_manifests_name_only_real_fields():
    docs = kuberay_documents()
    assert set(docs) == {
        "PersistentVolumeClaim/z2h-shared",
        "PersistentVolumeClaim/z2h-mlflow-db",
        "Deployment/z2h-mlflow",
        "Service/z2h-mlflow",
        "RayCluster/z2h",
        "RayJob/z2h-gpt-1b",
    }
    api = {"PersistentVolumeClaim": "v1", "Service": "v1", "Deployment": "apps/v1"}
    api |= {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1"}
    for key, doc in docs.items():
        assert doc["apiVersion"] == api[doc["kind"]], key
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}, key

    cluster = docs["RayCluster/z2h"]["spec"]
    assert set(cluster) <= RAY_CLUSTER_SPEC, set(cluster) - RAY_CLUSTER_SPEC
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_SPEC and {"template", "rayStartParams"} <= set(head)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # map[string]string
    check_pod_template(head["template"], "head")
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_SPEC, set(group) - WORKER_GROUP_SPEC
        assert {"groupName", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]  # fixed size
        check_pod_template(group["template"], group["groupName"])
    check_pod_template(docs["Deployment/z2h-mlflow"]["spec"]["template"], "mlflow")

    job = docs["RayJob/z2h-gpt-1b"]["spec"]
    assert set(job) <= RAY_JOB_SPEC, set(job) - RAY_JOB_SPEC
    assert job["clusterSelector"] == {"ray.io/cluster": "z2h"}  # the RayCluster above
    assert job["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode"}
    assert "rayClusterSpec" not in job and not job.get("shutdownAfterJobFinishes")  # an existing cluster


def test_kuberay_job_runs_the_multinode_config_on_that_cluster():
    docs = kuberay_documents()
    argv = shlex.split(docs["RayJob/z2h-gpt-1b"]["spec"]["entrypoint"])
    assert argv[:2] == ["z2h", "run"]
    config_path = Path(argv[2].replace("/app/", f"{REPO}/"))  # the image has the checkout at /app
    assert config_path == MULTINODE
    overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    config = multinode_config(*overrides)
    assert config.run.tracking == "http://z2h-mlflow:5000"
    assert config.run.workdir == Path("/shared/z2h")
    spec = docs["RayCluster/z2h"]["spec"]
    mounts = {m["mountPath"] for m in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/shared" in mounts  # the work dir is on the shared volume

    nodes = [placement.Node("head", "", 0, 0)]
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus, gpus = float(limits["cpu"]), float(limits["nvidia.com/gpu"])
        nodes += [placement.Node(f"{group['groupName']}-{i}", "", cpus, gpus) for i in range(group["replicas"])]
    for name, stage in registry.stages().items():
        if name in config.stages:
            assert placement.problem(name, stage.resources(config.stages[name]), nodes) is None, name
    assert storage.problems(config.run, len(nodes)) == []
    assert storage.problems(multinode_config().run, len(nodes))  # without a tracking server: refused


def test_templates_use_the_projects_ray_version():
    ray_version = version("ray")
    docker_from = re.search(r"^FROM rayproject/ray:(\S+)", (TEMPLATES / "Dockerfile").read_text(), re.M)
    assert docker_from and docker_from.group(1).startswith(f"{ray_version}-")
    assert kuberay_documents()["RayCluster/z2h"]["spec"]["rayVersion"] == ray_version
