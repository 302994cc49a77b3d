"""The models an eval run measures: the model stages among its upstream outputs, in the order the
config lists them. Which tokenizer trained a model, and the refusal of one that does not fit, are
`stages.common.model_folder`'s (`z2h chat` and the other model commands use them too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.common.model import CONFIG_FILE, GPTConfig
from stages.common.model_folder import is_model_folder, read_manifest

COLUMNS = {"pretrain": "base", "sft": "sft", "rl": "rl"}  # table column per model stage
CHAT_STAGES = ("sft", "rl")


@dataclass(frozen=True)
class ModelRef:
    stage: str  # pretrain | sft | rl
    folder: Path  # the model folder
    fingerprint: str = ""  # the store entry's fingerprint ("" outside the store)

    @property
    def column(self) -> str:
        return COLUMNS.get(self.stage, self.stage)

    @property
    def chat(self) -> bool:
        return self.stage in CHAT_STAGES

    def config(self) -> GPTConfig:
        return GPTConfig.from_json((self.folder / CONFIG_FILE).read_text())


def upstream_models(upstream: dict[str, Path], stages: list[str]) -> list[ModelRef]:
    """The models among a stage's upstream outputs, in `stages` order; missing ones are skipped."""
    found = []
    for stage in stages:
        entry = upstream.get(stage)
        if entry is not None and is_model_folder(Path(entry) / "model"):
            found.append(ModelRef(stage, Path(entry) / "model", read_manifest(Path(entry)).get("fingerprint", "")))
    return found
