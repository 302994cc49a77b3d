"""Ctrl-C for `z2h chat`, whose main thread waits in readline while helper threads run.

Python notices a signal in the main thread only: its C handler sets a flag, and readline's wait
for a key ends (and the flag is checked) only when the signal interrupts that very thread. When a
helper thread (torch's or numpy's pools) took the SIGINT of a Ctrl-C, the chat slept on at its
prompt, the KeyboardInterrupt pending until the next Enter: 4 of 10 tries through a
pseudo-terminal, 0 of 12 with this module. So the chat holds SIGINT from its first line (this
module imports nothing that starts a thread), every helper thread inherits the block, and the
main thread alone takes it back.
"""

from __future__ import annotations

import signal


def hold_sigint() -> None:
    """Block SIGINT in the calling (main) thread: every thread started from now on blocks it too."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def release_sigint() -> None:
    """Unblock SIGINT in the main thread (a Ctrl-C pressed while it was held arrives now)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
