"""Ctrl-C for `z2h chat`, whose main thread waits in readline while helper threads run.

At the prompt, readline passes Ctrl-C on by sending SIGINT to the process again while its own
handler blocks SIGINT in the main thread. Taken by a helper thread (numpy's BLAS pool, torch's),
that signal left the main thread asleep in readline's select and the chat deaf to Ctrl-C. So the
chat holds SIGINT from its first line (this module imports nothing that starts a thread), every
helper thread inherits the block, and the main thread alone takes it back.
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
