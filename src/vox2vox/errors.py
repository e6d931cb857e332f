"""The project's own error for problems a user can fix (bad input, bad config)."""

from __future__ import annotations


class Vox2VoxError(Exception):
    """A user-facing problem: the CLI prints ``str(err)`` on one line and exits with status 2.

    Messages name the file (or config key) and the problem, and say what to do where possible.
    """


class Vox2VoxWarning(UserWarning):
    """Input that is read, but probably not what the user meant (a file whose two orientation
    headers disagree, training data without signal or foreground). The CLI prints it as one line,
    ``vox2vox <command>: warning: <message>``; the message names the file and the problem."""
