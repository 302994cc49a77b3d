"""Errors that reach the user as one line and an exit code, never as a traceback.

Every way `z2h` ends maps to one exit code (`EXIT_CODES`, printed by `z2h --help` and the README):
what the user must fix (2), what the machine or its services must fix (3), and what z2h must fix (4)
are told apart, so a script or a scheduler can react to each.
"""

from __future__ import annotations

import errno

OK, STAGE_FAILED, USAGE, ENVIRONMENT, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 4, 130

EXIT_CODES = {
    OK: "success",
    STAGE_FAILED: "a stage failed; the run summary names it and its log",
    USAGE: "bad usage or config: a flag, file, key, value, stage or model target that is wrong (the message names it)",
    ENVIRONMENT: "environment: Ray, the tracking server, the store or the work dir cannot be started, reached or "
    "written, a package is missing, or the disk is full",
    INTERNAL: "internal error: a bug in z2h (Z2H_DEBUG=1 shows the traceback)",
    INTERRUPTED: "interrupted (Ctrl-C)",
}

# OSErrors that no change to the command line fixes: the machine must.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class UsageError(Exception):
    """Bad command line, config or target: exit 2, nothing written to the store."""

    exit_code = USAGE


class EnvironmentProblem(Exception):
    """The command is fine but the machine, cluster or a service is not: exit 3."""

    exit_code = ENVIRONMENT


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception that ended a command."""
    if isinstance(exc, UsageError | EnvironmentProblem):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, ImportError) or (isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS):
        return ENVIRONMENT
    return INTERNAL


def describe_exit_codes() -> str:
    return "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())
