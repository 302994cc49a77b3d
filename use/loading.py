"""A found model, loaded: weights on the best device and the tokenizer it was trained with (checked)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UsageError
from use.locate import Found


@dataclass
class Loaded:
    model: object  # stages.common.model.GPT, in eval mode
    tokenizer: object  # stages.common.tokenizer.Tokenizer
    stage: str | None  # pretrain | sft | rl; None for a bare folder
    label: str  # how to name it to the user

    @property
    def chat(self) -> bool:
        """Taught the chat format (SFT and RL models)."""
        return self.stage in ("sft", "rl")


def load_model(found: Found, tokenizer_dir: Path | None = None, device: str | None = None) -> Loaded:
    """The model in `found` with its tokenizer (`tokenizer_dir` overrides the recorded one); a tokenizer
    that does not belong to the model is a one-line UsageError naming both fingerprints."""
    import torch

    from stages.common.model import load_pretrained
    from stages.common.model_folder import TokenizerMismatch, check_tokenizer
    from stages.common.tokenizer import TokenizerError, load

    tokenizer_dir = tokenizer_dir or found.tokenizer
    if tokenizer_dir is None:
        raise UsageError(f"no tokenizer is recorded for {found.label}; pass --tokenizer FOLDER")
    try:
        tokenizer = load(tokenizer_dir)
        check_tokenizer(found.folder, tokenizer, recorded=found.tokenizer)
    except (TokenizerError, TokenizerMismatch) as exc:
        raise UsageError(str(exc)) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Loaded(load_pretrained(found.folder, device=device).eval(), tokenizer, found.stage, found.label)
