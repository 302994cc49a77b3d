"""Where SFT starts (`stages.sft.init`): this run's pretrain stage, a model in the store, or a folder.

  pretrain             this run's pretrain stage (the default; SFT then needs it)
  STAGE/FINGERPRINT    an entry of this run's local store holding model/ (`pretrain/3fa2`: a unique prefix)
  PATH                 a z2h model folder (config.json + model.safetensors), or a store entry holding model/,
                       e.g. another run's output

Starting from a store entry or a folder, the pipeline needs no pretrain stage. The model's identity goes
into SFT's fingerprint: a store entry's stage and fingerprint (its content is fixed), a folder's config
hash and its weights' size and modification time. Whether its tokenizer is the tokenizer stage's is checked
when SFT starts (`stages.common.model_folder`); a vocabulary too small for the tokenizer is refused as soon
as the config is validated.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.store import is_uri
from stages.common.model_config import CONFIG_FILE, WEIGHTS_FILE, GPTConfig
from stages.common.model_folder import is_model_folder, read_manifest

PRETRAIN = "pretrain"
MODEL_STAGES = ("pretrain", "sft", "rl")
ENTRY = re.compile(r"^(?P<stage>[a-z]+)/(?P<prefix>[0-9a-f]{4,})$")


@dataclass(frozen=True)
class StartingPoint:
    folder: Path  # the model folder (config.json + model.safetensors)
    identity: str  # what the fingerprint records
    run_id: str | None  # the MLflow run that produced it, when a store manifest names one
    label: str  # how to name it to people and MLflow

    def model(self) -> GPTConfig:
        return GPTConfig.from_json((self.folder / CONFIG_FILE).read_text())

    @property
    def digest(self) -> str:
        """Short, as MLflow shows dataset digests: a store entry's fingerprint, else a hash of the identity."""
        if self.identity.startswith("store:"):
            return self.identity.rpartition("/")[2]
        return hashlib.sha256(self.identity.encode()).hexdigest()[:20]


def store_root(run) -> Path | None:
    """The local store folder a `RunConfig` names (None: the store is on a URI)."""
    if run.store and is_uri(run.store):
        return None
    return Path(run.store) if run.store else Path(run.workdir) / "store"


def resolve(init: str, store: Path | None) -> StartingPoint:
    """The model `init` names (anything but `pretrain`); ValueError("init: ...") saying why not."""
    entry = ENTRY.match(init)
    if entry and not Path(init).exists():
        return _from_entry(entry["stage"], entry["prefix"], store)
    return _from_folder(Path(init).expanduser().absolute())


def _from_entry(stage: str, prefix: str, store: Path | None) -> StartingPoint:
    if stage not in MODEL_STAGES:
        raise ValueError(f"init: {stage}/{prefix}: {stage!r} makes no model (one of {', '.join(MODEL_STAGES)})")
    if store is None:
        raise ValueError(f"init: {stage}/{prefix}: the store is not a local folder; name the model's folder instead")
    found = sorted(e for e in (store / stage).glob(f"{prefix}*") if is_model_folder(e / "model"))
    if len(found) != 1:
        listed = sorted(e.name for e in (store / stage).glob("*") if is_model_folder(e / "model"))[:8]
        why = "matches several entries" if found else "matches no entry holding a model"
        raise ValueError(f"init: {stage}/{prefix} {why} in {store / stage} (there: {', '.join(listed) or 'none'})")
    return _from_folder(found[0])


def _from_folder(path: Path) -> StartingPoint:
    folder = next((f for f in (path, path / "model") if is_model_folder(f)), None)
    if folder is None:
        raise ValueError(f"init: {path} holds no z2h model ({CONFIG_FILE} + {WEIGHTS_FILE}, or model/ with them)")
    manifest = read_manifest(folder.parent)
    if manifest.get("stage") and manifest.get("fingerprint"):  # a store entry: its fingerprint fixes its content
        label = f"{manifest['stage']}/{manifest['fingerprint']}"
        return StartingPoint(folder, f"store:{label}", manifest.get("run_id"), label)
    config = hashlib.sha256((folder / CONFIG_FILE).read_bytes()).hexdigest()
    weights = (folder / WEIGHTS_FILE).stat()
    identity = f"config:{config},weights:size:{weights.st_size},mtime_ns:{weights.st_mtime_ns}"
    return StartingPoint(folder, identity, manifest.get("run_id"), str(folder))
