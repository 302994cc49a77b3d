"""Where a run's files may live when the Ray cluster has more than one node.

Stage tasks and their workers run on any node, and every one of them reads and writes the
work dir (checkpoints, task markers, staged outputs, logs), the store and the tracking store.
On one node anything goes. On several, each of those must be storage every node sees:

- the work dir (and a store given as a plain path) on a filesystem every node mounts at the
  same path (NFS, Lustre, EFS, Filestore, a ReadWriteMany volume). z2h cannot tell a mounted
  shared filesystem from a local disk, so the user says so: `run.shared_storage: true`;
- the store may instead be an object-store URI (`s3://`, `gs://`, ...), shared by nature
  (the work dir must still be shared: checkpoints and task markers live there);
- tracking on an MLflow server (`http(s)://`) or a database server, never `sqlite:` or a
  file store: those are written from every node at once and sqlite's locking does not hold
  on network filesystems.
"""

from __future__ import annotations

from pipeline.errors import UsageError
from pipeline.store import is_uri

LOCAL_TRACKING = ("sqlite:", "file:")


def problems(run, nodes: int) -> list[str]:
    """What is node-local in `run` (a RunConfig) for a cluster of `nodes` alive nodes."""
    if nodes <= 1:
        return []
    found = []
    if not run.shared_storage:
        on_disk = run.store and (run.store.startswith("file:") or not is_uri(run.store))
        store = f" and run.store {run.store}" if on_disk else ""
        found.append(
            f"run.workdir {run.workdir}{store} hold checkpoints, task markers and staged outputs that every "
            "node reads and writes: put them on a filesystem all nodes mount at the same path (NFS, Lustre, "
            "EFS, Filestore) and set run.shared_storage: true"
        )
    tracking = run.tracking
    plain_path = "://" not in tracking and not tracking.startswith("databricks")
    if tracking.startswith(LOCAL_TRACKING) or plain_path:
        found.append(
            f"run.tracking_uri {tracking} is a local tracking store that stages on every node would write at "
            "once (sqlite's locks do not hold on network filesystems): run `mlflow server` and set "
            "run.tracking_uri: http://<host>:5000"
        )
    return found


def check(run, nodes: int) -> None:
    found = problems(run, nodes)
    if found:
        raise UsageError(f"the Ray cluster has {nodes} nodes, so:\n  " + "\n  ".join(found))
