"""Progress bars written to a log (pytest's captured stderr is not a terminal): a line per
interval while a bar moves, its last reading once at close, nothing after."""

from __future__ import annotations

import pytest

from pipeline import progress
from pipeline.progress import LineBar, Progress


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def lines(capsys: pytest.CaptureFixture) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_a_log_gets_a_line_per_interval_while_the_bar_moves(clock, capsys):
    bar = Progress("pretrain", interval=5.0).bar(total=60, desc="train", unit="step")
    assert isinstance(bar, LineBar)
    for _ in range(4):  # 4 s: within the first interval
        clock[0] += 1.0
        bar.update(1)
    assert lines(capsys) == []
    clock[0] += 1.0
    bar.update(1)
    clock[0] += 1.0
    bar.update(1)
    (line,) = lines(capsys)
    assert line.startswith("pretrain: train:") and " 5/60 " in line


def test_a_closed_bar_prints_its_last_reading_once_and_nothing_more(clock, capsys):
    bar = Progress("pretrain", interval=5.0).bar(total=60, desc="train", unit="step")
    clock[0] += 10.0
    bar.update(59)
    clock[0] += 10.0
    bar.update(1)
    bar.close()
    printed = lines(capsys)
    assert [line.count("60/60") for line in printed] == [0, 1]  # 59 at 10 s, then 60 at 20 s
    clock[0] += 100.0
    bar.update(1)
    bar.close()
    assert lines(capsys) == []


def test_close_right_after_a_line_repeats_nothing(clock, capsys):
    bar = Progress("eval", interval=5.0).bar(total=3, desc="evaluating", unit="unit")
    clock[0] += 6.0
    bar.update(3)
    bar.close()
    assert len(lines(capsys)) == 1


def test_iterating_updates_and_closes(clock, capsys):
    bar = Progress("data").bar(range(3), desc="tasks")
    assert list(bar) == [0, 1, 2]
    (line,) = lines(capsys)
    assert "3/3" in line
    assert bar.closed


def test_bytes_read_in_units_and_disabled_bars_print_nothing(clock, capsys):
    bar = Progress("tokenizer").bar(desc="encoding", unit="B")
    bar.update(81_800)
    bar.close()
    assert "81.8kB" in lines(capsys)[0]
    quiet = Progress("tokenizer", enabled=False).bar(total=2)
    quiet.update(2)
    quiet.close()
    assert lines(capsys) == []
