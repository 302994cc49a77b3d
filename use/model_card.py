"""The exported model's card (`README.md`): what it is, how to load it, and where it came from.

Lineage is read from the store: the model's entry manifest names its producing MLflow run and its
upstream fingerprints; walking them reaches the tokenizer and data entries. The newest eval entry
that measured this very model (its manifest's upstream holds the model's fingerprint) gives the
eval table. A bare model folder outside a store has no lineage, and the card says so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.common.model_folder import MANIFEST, read_manifest

SHOWN_METRICS = 4  # per stage in the lineage table: the first few the stage reported


@dataclass(frozen=True)
class Ancestor:
    stage: str
    fingerprint: str
    run_id: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Lineage:
    stage: str | None
    fingerprint: str | None
    run_id: str | None  # the MLflow run that produced the model
    ancestors: list[Ancestor] = field(default_factory=list)  # the model's entry first, then upstream, nearest first
    eval_table: str | None = None
    pipeline_run_id: str | None = None  # filled from MLflow when it can be asked


def lineage(model_folder: Path) -> Lineage:
    """The store lineage of the model in `model_folder` (`<store>/<stage>/<fingerprint>/model`)."""
    entry = Path(model_folder).absolute().parent
    manifest = read_manifest(entry)
    if not manifest.get("stage"):
        return Lineage(None, None, None)
    store = entry.parent.parent
    ancestors, todo, seen = [], [(manifest["stage"], manifest.get("fingerprint", entry.name))], set()
    while todo:
        stage, fingerprint = todo.pop(0)
        if (stage, fingerprint) in seen:
            continue
        seen.add((stage, fingerprint))
        found = read_manifest(store / stage / fingerprint)
        ancestors.append(Ancestor(stage, fingerprint, str(found.get("run_id") or "?"), found.get("metrics") or {}))
        todo += sorted((found.get("upstream") or {}).items())
    first = ancestors[0]
    return Lineage(first.stage, first.fingerprint, manifest.get("run_id"), ancestors, _eval_table(store, first))


def _eval_table(store: Path, model: Ancestor) -> str | None:
    """table.md of the newest eval entry whose upstream is this model."""
    best, newest = None, -1.0
    for manifest_path in (store / "eval").glob(f"*/{MANIFEST}"):
        manifest = read_manifest(manifest_path.parent)
        if (manifest.get("upstream") or {}).get(model.stage) != model.fingerprint:
            continue
        table = manifest_path.parent / "table.md"
        if table.is_file() and float(manifest.get("created", 0)) > newest:
            best, newest = table, float(manifest.get("created", 0))
    return best.read_text() if best else None


def _metrics(metrics: dict[str, float]) -> str:
    shown = list(metrics.items())[:SHOWN_METRICS]
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown)


def render(
    name: str,
    architecture: str,
    params: int,
    context: int,
    vocab: int,
    chat: bool,
    found: Lineage,
    tracking_uri: str | None,
) -> str:
    """The card as Markdown with Hugging Face's YAML header."""
    kind = "chat model (SFT/RL: replies in the chat template)" if chat else "base model (continues text)"
    header = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["z2h", architecture]}
    usage = (
        "messages = [{'role': 'user', 'content': 'What is 2 + 3?'}]\n"
        "ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt', return_dict=True,\n"
        "                              sanitize_control_tokens=True)['input_ids']  # typed control tokens stay text\n"
        if chat
        else "ids = tok('The king', return_tensors='pt')['input_ids']  # <|bos|> + text, as z2h prompts a base model\n"
    )
    lines = [
        "---",
        *(f"{key}: {json.dumps(value)}" for key, value in header.items()),
        "---",
        "",
        f"# {name}",
        "",
        f"A {kind} trained by zero2hero (`z2h`), exported with `z2h export` on "
        f"{time.strftime('%Y-%m-%d')}. Architecture: `{architecture}` (no remote code), {params / 1e6:.2f}M "
        f"parameters, {context}-token context, {vocab}-token byte-level BPE vocabulary.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained('.')",
        "model = AutoModelForCausalLM.from_pretrained('.')",
        usage.rstrip("\n"),
        "out = model.generate(ids, max_new_tokens=64)",
        "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
        "```",
        "",
        "## Lineage",
        "",
    ]
    if not found.ancestors:
        lines += ["Exported from a model folder outside a z2h store: no lineage recorded.", ""]
    else:
        where = f" (MLflow tracking: `{tracking_uri}`)" if tracking_uri else ""
        lines += [f"Stage outputs from the z2h store{where}; the same fingerprint means the same inputs.", ""]
        if found.pipeline_run_id:
            lines += [f"Pipeline run: `{found.pipeline_run_id}`", ""]
        lines += ["| stage | fingerprint | MLflow run | metrics |", "|---|---|---|---|"]
        lines += [f"| {a.stage} | `{a.fingerprint}` | `{a.run_id}` | {_metrics(a.metrics)} |" for a in found.ancestors]
        lines.append("")
    if found.eval_table:
        lines += ["## Evaluation", "", found.eval_table.strip(), ""]
    return "\n".join(lines)
