"""The project's own error for problems a user can fix (bad input, bad config)."""

from __future__ import annotations


class Vox2VoxError(Exception):
    """A user-facing problem: the CLI prints ``str(err)`` on one line and exits with status 2.

    Messages name the file (or config key) and the problem, and say what to do where possible.
    """
