"""Errors that reach the user as one line and an exit code, never as a traceback."""


class UsageError(Exception):
    """Bad command line, config, or environment: exit 2, nothing written to the store."""

    exit_code = 2
