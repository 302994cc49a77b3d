"""`z2h chat` and `z2h sample` on a tiny store: a real session through a pseudo-terminal, one-shot
completions, the run named by a config or by --workdir, and the one-line refusals (unknown run id,
a folder without a model, a tokenizer that does not belong to the model, bad sampling knobs)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest
from eval_tiny import write_store

from pipeline import cli
from stages.common.model_folder import fingerprint
from stages.common.tokenizer import Tokenizer
from use.chat import Conversation, chat_loop
from use.decode import TextStream
from use.loading import Loaded


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chat")
    write_store(folder)
    return folder


@pytest.fixture(scope="module")
def sft_loaded(workdir) -> Loaded:
    from stages.common.model import load_pretrained
    from stages.common.tokenizer import load

    store = workdir / "store"
    tokenizer = load(store / "tokenizer" / "tok0000000000000000a" / "tokenizer")
    model = load_pretrained(store / "sft" / "sft0000000000000000c" / "model").eval()
    return Loaded(model, tokenizer, "sft", "sft/test")


class Terminal:
    """A child process on a pseudo-terminal: type into it, wait for what it prints."""

    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its stdin/stdout/stderr are the terminal
            # A foreground job in a terminal starts with SIGINT at its default. A test suite run as a
            # background job (`cmd &` from a script) has it ignored, the child would inherit that,
            # and Python leaves an ignored SIGINT ignored: Ctrl-C would then do nothing.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execv(argv[0], argv)
        self.seen = ""

    def expect(self, text: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"waited {timeout} s for {text!r}; the terminal shows:\n{self.seen[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the child exited before printing {text!r}:\n{self.seen[-2000:]}")
                self.seen += chunk.decode("utf-8", "replace")
        found = self.seen
        self.seen = self.seen[self.seen.index(text) + len(text) :]
        return found

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def exit_status(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if select.select([self.fd], [], [], 0.05)[0]:  # never block: a child that lives on fails the test
                with contextlib.suppress(OSError):
                    os.read(self.fd, 4096)  # drain, so the child never blocks on a full terminal
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(self.pid, 9)
        raise AssertionError("the chat did not exit")


def _blocks_sigint(pid: int, thread: str) -> bool:
    status = Path(f"/proc/{pid}/task/{thread}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
    return bool(mask & (1 << (signal.SIGINT - 1)))


def z2h(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


@pytest.mark.slow
def test_chat_through_a_pseudo_terminal_answers_resets_and_leaves_on_ctrl_c(workdir):
    session = Terminal(z2h("chat", "--workdir", str(workdir), "--temperature", "0", "--max-new-tokens", "12"))
    banner = session.expect("you> ")
    assert "sft/sft0000000000000000c" in banner  # the latest model: no rl in the store, so sft
    session.send("What is 2 + 3?\r")
    reply = session.expect("you> ")
    assert "model> " in reply and len(reply.split("model> ", 1)[1].strip()) > 0
    # Ctrl-C must reach the main thread, where readline waits (use/sigint.py): the others block SIGINT.
    helpers = [t for t in os.listdir(f"/proc/{session.pid}/task") if int(t) != session.pid]
    assert all(_blocks_sigint(session.pid, t) for t in helpers)
    assert not _blocks_sigint(session.pid, str(session.pid))
    session.send("And then?\r")
    session.expect("model> ")
    session.expect("you> ")
    session.send("/reset\r")
    session.expect("[conversation cleared]")
    session.expect("you> ")
    session.send("\x03")  # Ctrl-C at the prompt: the terminal turns it into SIGINT for the chat
    assert session.exit_status() == 0
    assert "Traceback" not in session.seen


def test_chat_loop_keeps_the_conversation_and_obeys_its_commands(sft_loaded):
    from stages.common.generate import Sampling

    loaded = sft_loaded
    model, tokenizer = loaded.model, loaded.tokenizer

    typed = iter(["first question", "second question", "/bogus", "/reset", "third", "/quit", "never read"])
    out = io.StringIO()
    seen_prompts = []

    def read(prompt: str) -> str:
        seen_prompts.append(prompt)
        return next(typed)

    assert chat_loop(loaded, Sampling(max_new_tokens=6), seed=0, read=read, out=out) == 0
    text = out.getvalue()
    assert text.count("model> ") == 3 and "unknown command /bogus" in text and "[conversation cleared]" in text
    assert len(seen_prompts) == 6  # stopped reading at /quit

    def end_of_input(prompt: str) -> str:  # Ctrl-D
        raise EOFError

    out = io.StringIO()
    assert chat_loop(Loaded(model, tokenizer, "pretrain", "pretrain/test"), Sampling(), None, end_of_input, out) == 0
    assert "never taught the chat format" in out.getvalue()

    conversation = Conversation(tokenizer, seq_len=64, min_reply=8)
    conversation.add("hello", "hi there")
    ids, notes = conversation.prompt("how are you?")
    assert tokenizer.decode(ids).count("<|user_start|>") == 2 and not notes  # context kept
    conversation.add("how are you?", "fine " * 10)
    before = list(conversation.messages)
    ids, notes = conversation.prompt("and now?")
    assert len(ids) <= 56 and notes and "forgot the oldest" in notes[0]
    kept = conversation.messages
    assert len(kept) < len(before) and before[len(before) - len(kept) :] == kept  # the oldest went first
    conversation.add("x", " ")  # an empty reply is not a turn
    assert conversation.messages == kept


def test_chat_refuses_a_line_that_is_not_text_and_carries_on(sft_loaded):
    from stages.common.generate import Sampling

    undecodable = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    typed = iter(["bad \udcff byte", "a\x00b", undecodable, "hello", "/quit"])

    def read(prompt: str) -> str:
        line = next(typed)
        if isinstance(line, Exception):  # what input() raises when a strict terminal encoding meets bad bytes
            raise line
        return line

    out = io.StringIO()
    assert chat_loop(sft_loaded, Sampling(max_new_tokens=4), seed=0, read=read, out=out) == 0
    text = out.getvalue()
    assert "(invalid_unicode); nothing was sent" in text and "(nul_character); nothing was sent" in text
    assert "[that line is not utf-8 text (invalid start byte); nothing was sent]" in text
    assert text.count("model> ") == 1  # only "hello" was answered
    conversation = Conversation(sft_loaded.tokenizer, seq_len=64, min_reply=8)
    with pytest.raises(ValueError, match="invalid_unicode"):
        conversation.prompt("\ud800")


def test_streamed_text_never_splits_a_character():
    tokenizer = Tokenizer.from_ranks({bytes([b]): b for b in range(256)})
    stream = TextStream(tokenizer)
    text = "".join(stream.push(b) for b in "héllo 🙂".encode()) + stream.flush()
    assert text == "héllo 🙂"


def test_sample_gives_reproducible_one_shot_completions(workdir, capsys):
    args = ["sample", "pretrain", "--workdir", str(workdir), "-p", "The answer is", "-n", "2", "--json"]
    assert cli.main([*args, "--seed", "3"]) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["sample"] for r in first] == [0, 1] and all(r["prompt"] == "The answer is" for r in first)
    assert cli.main([*args, "--seed", "3"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == first
    assert cli.main(["sample", "sft", "--workdir", str(workdir), "-p", "Hi", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("you> Hi\nmodel> ")  # a chat model gets the chat template


def test_sample_refuses_a_prompt_that_is_not_text_naming_it(workdir, capsys, monkeypatch):
    argv = ["sample", "pretrain", "--workdir", str(workdir), "--max-new-tokens", "2", "--json"]
    assert cli.main([*argv, "-p", "fine", "-p", "bad \udcff byte"]) == 2  # what surrogateescape makes of argv
    assert "prompt 2 cannot be used as text: invalid_unicode" in capsys.readouterr().err
    assert cli.main([*argv, "-p", "a\x00b"]) == 2
    assert "prompt 1 cannot be used as text: nul_character" in capsys.readouterr().err
    for errors, said in (("surrogateescape", "prompt 2 cannot be used as text"), ("strict", "stdin is not utf-8")):
        stdin = io.TextIOWrapper(io.BytesIO(b"fine\nbad \xff byte\n"), encoding="utf-8", errors=errors)
        monkeypatch.setattr(sys, "stdin", stdin)
        assert cli.main(argv) == 2
        assert said in capsys.readouterr().err


def test_a_config_names_the_run_like_for_every_other_command(workdir, capsys, tmp_path, monkeypatch):
    config = tmp_path / "elsewhere.yaml"
    config.write_text(f"run:\n  workdir: {workdir}\nstages:\n  nosuch: {{}}\n")  # stage sections are not read
    monkeypatch.chdir(tmp_path)  # the default work dir (.z2h here) holds nothing
    argv = ["sample", "base", "-p", "Once", "--max-new-tokens", "3", "--json"]
    assert cli.main([*argv, "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["model"].startswith("pretrain/pre0")
    assert cli.main([*argv, "--set", f"run.workdir={workdir}"]) == 0
    assert cli.main(argv) == 2
    assert "no pretrain model in the store" in capsys.readouterr().err
    assert cli.main([*argv, "--workdir", str(workdir), "--temperature", "-1"]) == 2
    assert "--temperature and --top-k must be >= 0" in capsys.readouterr().err


def test_unknown_targets_get_one_line_that_lists_what_exists(workdir, capsys, tmp_path):
    assert cli.main(["chat", "0123456789abcdef0123456789abcdef", "--workdir", str(workdir)]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "no run or model '0123456789abcdef0123456789abcdef'" in error
    assert "sft/sft0000000000000000c" in error and "pretrain/pre0000000000000000b" in error
    assert cli.main(["sample", str(tmp_path), "--workdir", str(workdir), "-p", "x"]) == 2
    assert "holds no model" in capsys.readouterr().err


def test_a_model_with_another_tokenizer_is_refused_with_both_fingerprints(workdir, capsys, tmp_path):
    other = Tokenizer.from_ranks({bytes([b]): b for b in range(256)})
    other.save(tmp_path / "other")
    assert cli.main(["chat", "sft", "--workdir", str(workdir), "--tokenizer", str(tmp_path / "other")]) == 2
    error = " ".join(capsys.readouterr().err.split())
    from stages.common.tokenizer import load

    mine = load(workdir / "store" / "tokenizer" / "tok0000000000000000a" / "tokenizer")
    assert "tokenizer mismatch" in error
    assert fingerprint(other).split()[0] in error and fingerprint(mine).split()[0] in error
