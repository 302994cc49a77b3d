"""The report card's curves: every stage metric whose name contains "loss" or "reward", read from its
MLflow history and drawn as one PNG per stage and kind."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.report_blocks import Image, Section, not_run

CURVES = {"loss": "Loss curves", "reward": "Reward curves"}


@dataclass(frozen=True)
class CurveSource:
    stage: str
    run_id: str  # the stage's run in this pipeline run
    history_run_id: str  # where its histories live: the producing run, for a cache hit


def histories(client: Any, run_id: str, names: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    """Each metric's (step, value) points in step order; a metric logged without steps in logging order.
    Metrics with a single point draw no curve and are left out."""
    curves = {}
    for name in names:
        history = client.get_metric_history(run_id, name)
        if len({m.step for m in history}) == 1:
            points = [(i, m.value) for i, m in enumerate(sorted(history, key=lambda m: m.timestamp))]
        else:
            points = [(m.step, m.value) for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
        if len(points) > 1:
            curves[name] = points
    return curves


def plot(title: str, curves: Mapping[str, Sequence[tuple[int, float]]], ylabel: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    figure = Figure(figsize=(7.0, 3.6), dpi=100)
    axes = figure.add_subplot()
    for name, points in sorted(curves.items()):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, label=name, marker="." if len(points) < 20 else None, linewidth=1.4)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def curve_sections(sources: Iterable[CurveSource], client: Any) -> list[Section]:
    per_kind: dict[str, list[Image]] = {kind: [] for kind in CURVES}
    for source in sources:
        run_id = source.history_run_id
        try:
            names = list(client.get_run(run_id).data.metrics)
        except Exception:  # the producing run was deleted: nothing to plot
            continue
        where = "" if run_id == source.run_id else f" (from the producing run {run_id})"
        for kind in CURVES:
            found = histories(client, run_id, [n for n in names if kind in n.lower()])
            if found:
                image = plot(f"{source.stage}: {kind}", found, kind)
                per_kind[kind].append(Image(f"{kind}_{source.stage}.png", image, f"{source.stage}{where}"))
    sections = []
    for kind, title in CURVES.items():
        why = f"no stage logged a metric named *{kind}* at more than one step"
        sections.append(Section(title, list(per_kind[kind])) if per_kind[kind] else not_run(title, why))
    return sections
