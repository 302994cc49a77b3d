"""Cluster rules without a cluster: will a stage fit the nodes (TP groups inside a node), and
what must be shared storage once there is more than one node."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import placement, storage
from pipeline.config import RunConfig
from pipeline.errors import UsageError
from pipeline.stage import Resources
from stages.pretrain import resources as pretrain_resources
from stages.pretrain.config import PretrainConfig

GPU_NODE = placement.Node("n", "10.0.0.1", cpus=96, gpus=8)
HEAD = placement.Node("head", "10.0.0.0", cpus=8, gpus=0)


def test_workers_fit_by_node_not_by_cluster_total():
    four_gpu = [placement.Node(f"n{i}", "", cpus=16, gpus=4) for i in range(2)]
    assert placement.problem("pretrain", Resources(cpus=4, gpus=1, workers=8), four_gpu) is None
    # 8 GPUs in all, but a worker wanting 5 fits on no node.
    found = placement.problem("pretrain", Resources(cpus=4, gpus=5, workers=1), four_gpu)
    assert found and "needs one node with 4 CPU 5 GPU" in found and "2x(16 CPU 4 GPU)" in found
    # CPUs run out before GPUs: 16 // 6 = 2 workers a node.
    found = placement.problem("pretrain", Resources(cpus=6, gpus=1, workers=8), four_gpu)
    assert found and "holds 4" in found


def test_tensor_parallel_groups_must_fit_inside_one_node():
    nodes = [HEAD, *(placement.Node(f"g{i}", "", cpus=96, gpus=6) for i in range(4))]  # 24 GPUs
    # 16 workers in TP groups of 4: a 6-GPU node holds one group, so 4 groups = 16 workers fit...
    assert placement.problem("pretrain", Resources(cpus=8, gpus=1, workers=16, group=4), nodes) is None
    # ...but 20 do not, although 24 GPUs exist: the 2 left on each node cannot form a group.
    found = placement.problem("pretrain", Resources(cpus=8, gpus=1, workers=20, group=4), nodes)
    assert found and "groups of 4 that share a node" in found and "holds 4 such groups" in found
    assert placement.problem("pretrain", Resources(cpus=8, gpus=1, workers=20, group=2), nodes) is None


def test_pretrain_declares_its_tp_degree_as_the_node_local_group():
    cfg = PretrainConfig.model_validate({"pp": 2, "dp": 2, "tp": 2, "gpus_per_worker": 1, "cpus_per_worker": 4})
    res = pretrain_resources(cfg)
    assert (res.workers, res.group, res.gpus) == (8, 2, 1)
    assert res.describe() == "8x(4 CPU 1 GPU) in node-local groups of 2"
    one_gpu_nodes = [placement.Node(f"n{i}", "", cpus=8, gpus=1) for i in range(8)]
    assert "share a node" in placement.problem("pretrain", res, one_gpu_nodes)


def test_no_gpus_at_all_is_a_clear_refusal():
    found = placement.problem("pretrain", Resources(cpus=1, gpus=1, workers=2), [HEAD])
    assert found == (
        "stage 'pretrain' needs 2 workers of (1 CPU 1 GPU) but the cluster (1 node: 1x(8 CPU)) holds 0: "
        "lower the stage's workers/resources or add nodes"
    )


def run_config(**values) -> RunConfig:
    return RunConfig.model_validate({"workdir": "/tmp/z2h-rules", **values})


def test_one_node_accepts_anything():
    assert storage.problems(run_config(), 1) == []


def test_several_nodes_need_shared_workdir_and_a_tracking_server():
    found = storage.problems(run_config(), 3)
    assert len(found) == 2
    assert "run.workdir /tmp/z2h-rules" in found[0] and "run.shared_storage: true" in found[0]
    assert "sqlite:////tmp/z2h-rules/mlflow.db" in found[1] and "mlflow server" in found[1]
    with pytest.raises(UsageError, match="the Ray cluster has 3 nodes"):
        storage.check(run_config(), 3)


def test_shared_flag_and_server_satisfy_the_rules():
    shared = run_config(shared_storage=True, tracking_uri="http://mlflow.internal:5000")
    assert storage.problems(shared, 5) == []
    with_store = run_config(shared_storage=True, tracking_uri="http://h:5000", store="s3://bucket/z2h")
    assert storage.problems(with_store, 5) == []
    # An object store alone is not enough: checkpoints and task markers live in the work dir.
    unshared = storage.problems(run_config(tracking_uri="http://h:5000", store="gs://bucket/z2h"), 2)
    assert len(unshared) == 1 and "run.workdir" in unshared[0] and "run.store" not in unshared[0]
    path_store = storage.problems(run_config(tracking_uri="http://h:5000", store="/data/store"), 2)
    assert "run.store /data/store" in path_store[0]
    for remote in ("databricks", "postgresql://mlflow@db/mlflow", "https://mlflow.example.com"):
        assert storage.problems(run_config(shared_storage=True, tracking_uri=remote), 2) == []
    for local in ("sqlite:////shared/mlflow.db", "file:///shared/mlruns", "/shared/mlruns"):
        found = storage.problems(run_config(shared_storage=True, tracking_uri=local), 2)
        assert len(found) == 1 and local in found[0]


def test_store_setting_is_validated():
    assert run_config(store="relative/store").store == str(Path("relative/store").absolute())
    assert run_config(store="s3://bucket/prefix").store == "s3://bucket/prefix"
    with pytest.raises(ValueError, match="memory:// lives in one process"):
        run_config(store="memory://x")
