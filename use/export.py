"""`z2h export TARGET OUT`: a model as a Hugging Face folder that `transformers` loads without remote code.

OUT receives `config.json` (Qwen3 or Llama: `hf_model`), `model.safetensors` under that architecture's
parameter names, `generation_config.json` (a chat model stops at `<|assistant_end|>`, a base model at
the next document's `<|bos|>`), `tokenizer.json`, `tokenizer_config.json` with the chat template and
`special_tokens_map.json` (`hf_tokenizer`), and `README.md`, the model card with its lineage
(`model_card`). A model from the store is also logged as the artifact folder `hf/` of the MLflow run
that produced it, so the run keeps its exported form. `push` uploads OUT to the Hugging Face Hub with
`huggingface_hub` (a token from `hf auth login` or $HF_TOKEN; needs the network).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UsageError
from use.locate import Found

HF_ARTIFACT_PATH = "hf"  # where the export goes in the producing MLflow run's artifacts
# Strings whose ids the exported tokenizer must reproduce before anything is written.
PROBES = (
    "Hello, world! It's 3.14159 o'clock.\n\n  Indented\ttext\r\nand CRLF",
    "naïve café, 日本語, русский, العربية, emoji 🎉👍🏽",
    "typed markers stay text: <|bos|><|user_start|> x <|assistant_end|>",
)


@dataclass(frozen=True)
class Exported:
    folder: Path
    architecture: str  # the transformers class
    logged_to: str | None = None  # the MLflow run the export was logged to
    pushed_to: str | None = None  # the Hub repository
    notes: list[str] = field(default_factory=list)  # what was skipped, and why

    def summary(self, label: str) -> str:
        lines = [f"exported {label} as {self.architecture} to {self.folder}"]
        if self.logged_to:
            lines.append(f"logged to MLflow run {self.logged_to} (artifacts {HF_ARTIFACT_PATH}/)")
        if self.pushed_to:
            lines.append(f"pushed to https://huggingface.co/{self.pushed_to}")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; name a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"{out} is not empty; pass --force to write the export over it")


def export(
    found: Found,
    out: Path,
    *,
    force: bool = False,
    tokenizer_dir: Path | None = None,
    tracking_uri: str | None = None,
    log: bool = True,
    push: str | None = None,
) -> Exported:
    from use.hf_model import NotExportable, architecture
    from use.loading import load_model

    out = Path(out)
    check_out(out, force)
    loaded = load_model(found, tokenizer_dir, device="cpu")
    try:
        arch = architecture(loaded.model.cfg)
    except NotExportable as exc:
        raise UsageError(f"cannot export {loaded.label}: {exc}") from None
    from use import model_card

    history = model_card.lineage(found.folder)
    if history.run_id and tracking_uri and not _missing_sqlite(tracking_uri):
        history = _with_pipeline_run(history, tracking_uri)
    out.mkdir(parents=True, exist_ok=True)
    write_folder(loaded, out, history, tracking_uri)
    notes, logged = [], None
    if log and history.run_id and tracking_uri and not _missing_sqlite(tracking_uri):
        try:
            from pipeline.lineage import Tracker

            Tracker(tracking_uri, history.run_id).log_artifact(out, HF_ARTIFACT_PATH)
            logged = history.run_id
        except Exception as exc:  # the export itself is done; MLflow is a copy of it
            notes.append(f"not logged to MLflow run {history.run_id} ({type(exc).__name__}: {exc})")
    elif log:
        notes.append("not logged to MLflow: no producing run is recorded for this model")
    if push:
        _push(out, push, loaded.label)
    return Exported(out, arch.class_name, logged, push, notes)


def write_folder(loaded, out: Path, history, tracking_uri: str | None) -> None:
    """Every file of the Hugging Face folder, from a loaded model and its tokenizer."""
    from safetensors.torch import save_file

    from stages.common.chat import ASSISTANT_END
    from stages.common.tokenizer import BOS
    from use import hf_tokenizer, model_card
    from use.hf_model import architecture, hf_config, hf_state_dict

    model, tokenizer = loaded.model, loaded.tokenizer
    cfg = model.cfg
    fast = hf_tokenizer.build_fast_tokenizer(tokenizer)
    _check_ids(fast, tokenizer)
    eos = ASSISTANT_END if loaded.chat else BOS
    eos_id = tokenizer.special(eos)
    dtype = next(model.parameters()).dtype
    save_file(hf_state_dict(cfg, model.state_dict()), str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", hf_config(cfg, dtype, tokenizer.bos_id, eos_id))
    generation = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,  # see hf_model.hf_config
        "max_length": cfg.seq_len,
        "do_sample": True,  # z2h chat's defaults
        "temperature": 0.8,
        "top_k": 50,
    }
    _write_json(out / "generation_config.json", generation)
    fast.save(str(out / hf_tokenizer.TOKENIZER_FILE))
    _write_json(out / hf_tokenizer.TOKENIZER_CONFIG_FILE, hf_tokenizer.tokenizer_config(tokenizer, eos, cfg.seq_len))
    _write_json(out / hf_tokenizer.SPECIAL_TOKENS_MAP_FILE, hf_tokenizer.special_tokens_map(tokenizer, eos))
    arch = architecture(cfg).model_type
    params = sum(p.numel() for p in model.parameters())
    card = model_card.render(
        loaded.label, arch, params, cfg.seq_len, cfg.vocab_size, loaded.chat, history, tracking_uri
    )
    (out / "README.md").write_text(card + "\n")


def _check_ids(fast, tokenizer) -> None:
    """Refuse to write a tokenizer that encodes differently from z2h's (the probes include typed markers)."""
    fast.encode_special_tokens = True  # as z2h encodes: control-token strings are text
    try:
        for text in PROBES:
            if fast.encode(text, add_special_tokens=False).ids != tokenizer.encode(text):
                raise UsageError(f"the Hugging Face tokenizer encodes {text!r} differently from z2h's; not exported")
    finally:
        fast.encode_special_tokens = False


def _missing_sqlite(uri: str) -> bool:
    """A sqlite store that does not exist holds no run, and asking would create it."""
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _with_pipeline_run(history, tracking_uri: str):
    """The lineage with the pipeline run that made the model, when MLflow answers."""
    from dataclasses import replace

    from mlflow import MlflowClient

    try:
        tags = MlflowClient(tracking_uri=tracking_uri).get_run(history.run_id).data.tags
    except Exception:  # the card is still right without it
        return history
    return replace(history, pipeline_run_id=tags.get("mlflow.parentRunId"))


def _push(out: Path, repo: str, label: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo, commit_message=f"z2h export of {label}")
    except Exception as exc:
        raise UsageError(f"exported to {out}, but the push to {repo} failed: {type(exc).__name__}: {exc}") from None
