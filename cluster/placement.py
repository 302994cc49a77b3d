"""Will a stage's workers fit on the nodes the cluster has? Asked before a stage starts, so a
stage that needs GPUs (or whole tensor-parallel groups on one node) that do not exist fails
with the reason instead of waiting forever for Ray to schedule it.

A worker of (c CPUs, g GPUs) fits `min(cpus // c, gpus // g)` times on a node. A stage with
`group > 1` (pretrain's TP degree) needs its workers in groups that share a node, so a node
holding 6 workers contributes only one group of 4. Ray Train places workers with the PACK
strategy and numbers ranks node by node, so consecutive ranks (one TP group, TP innermost)
share a node whenever every node holds whole groups; the pretrain workers check it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.stage import Resources


@dataclass(frozen=True)
class Node:
    node_id: str
    address: str
    cpus: float
    gpus: float

    def holds(self, cpus: float, gpus: float) -> int:
        """How many workers of (cpus, gpus) this node can run at once."""
        counts = [math.floor(have / need + 1e-9) for have, need in ((self.cpus, cpus), (self.gpus, gpus)) if need > 0]
        return min(counts) if counts else 1 << 30


def alive_nodes() -> list[Node]:
    """The cluster's alive nodes with their total (not currently free) CPUs and GPUs."""
    import ray

    found = []
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            found.append(
                Node(node["NodeID"], node.get("NodeManagerAddress", "?"), have.get("CPU", 0.0), have.get("GPU", 0.0))
            )
    return found


def _shape(nodes: list[Node]) -> str:
    """`2 nodes: 1x(0 CPU), 2x(2 CPU 1 GPU)` — the cluster in one line."""
    kinds: dict[tuple[float, float], int] = {}
    for node in nodes:
        kinds[(node.cpus, node.gpus)] = kinds.get((node.cpus, node.gpus), 0) + 1
    parts = [f"{n}x({c:g} CPU{f' {g:g} GPU' if g else ''})" for (c, g), n in sorted(kinds.items())]
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: {', '.join(parts)}"


def problem(stage: str, res: Resources, nodes: list[Node]) -> str | None:
    """Why the stage can never be scheduled on these nodes, or None when it fits."""
    gpu = f" {res.gpus:g} GPU" if res.gpus else ""
    if res.workers <= 1:
        if any(node.holds(res.cpus, res.gpus) >= 1 for node in nodes):
            return None
        return (
            f"stage '{stage}' needs one node with {res.cpus:g} CPU{gpu} but the cluster has {_shape(nodes)}: "
            "lower the stage's resources or add a bigger node"
        )
    group = max(1, res.group)
    groups = sum(node.holds(res.cpus, res.gpus) // group for node in nodes)
    if groups * group >= res.workers:
        return None
    worker = f"{res.workers} workers of ({res.cpus:g} CPU{gpu})"
    if group > 1:
        most = max((node.holds(res.cpus, res.gpus) for node in nodes), default=0)
        return (
            f"stage '{stage}' needs {worker} in groups of {group} that share a node (tensor parallel), "
            f"but the cluster ({_shape(nodes)}) holds {groups} such group{'s' if groups != 1 else ''} "
            f"(at most {most} workers on one node): lower tp to fit a node, lower the workers, or add nodes"
        )
    return (
        f"stage '{stage}' needs {worker} but the cluster ({_shape(nodes)}) holds {groups}: "
        "lower the stage's workers/resources or add nodes"
    )
