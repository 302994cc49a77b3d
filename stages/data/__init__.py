"""Data stage: raw web crawl or text datasets → clean, deduplicated documents, the FineWeb way.

Outputs: `documents/*.jsonl.gz` (id, text, url, language, language_score, source, metadata),
`stats.json` (the funnel) and `removed/` (samples of removed documents per reason).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.stage import Resources, Stage, StageCommand, deferred
from stages.data.budget import budget
from stages.data.config import DataConfig
from stages.data.report import SECTION
from stages.data.sources import input_identities


def resources(cfg: DataConfig) -> Resources:
    if cfg.workers <= 1:
        return Resources(cpus=cfg.cpus_per_worker)
    return Resources(cpus=cfg.cpus_per_worker, workers=cfg.workers)


def _configure_samples(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None, help="corpus seed (default: the config's run.seed)")
    parser.add_argument("--out", type=Path, default=None, help="also copy the WARC files into this folder")


def _run_samples(args: argparse.Namespace) -> int:
    import json
    import shutil

    from stages.data.samples.build import ensure_corpus

    # The same corpus the data stage reads: the config's work dir, seed and stages.data.samples.
    seed = args.run_config.seed if args.seed is None else args.seed
    corpus = ensure_corpus(args.run_config.workdir, args.stage_config.samples, seed)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in sorted(corpus.iterdir()):
            shutil.copy2(path, args.out / path.name)
    counts = json.loads((corpus / "counts.json").read_text())
    print(f"sample corpus: {args.out or corpus} ({sum(counts.values())} pages)")
    print(json.dumps(counts, sort_keys=True))
    return 0


stage = Stage(
    name="data",
    config_model=DataConfig,
    run=deferred("stages.data.run:run"),
    needs=(),
    resources=resources,
    report=SECTION,
    inputs=input_identities,
    budget=budget,
    commands={
        "samples": StageCommand(
            help="build (or find cached) the offline sample corpus: real text packed into WARC files",
            configure=_configure_samples,
            run=_run_samples,
        )
    },
    description="FineWeb-style URL, language and quality filtering plus MinHash dedup on Ray",
)
