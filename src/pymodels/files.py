"""Why a database file cannot be opened, in words.

Engines report a missing directory as "unable to open database file" (SQLite)
or "file not found" (Tokyo Cabinet, dbm). File backends ask
:func:`file_problem` once an open has failed, and put its answer, which names
the path and what is wrong with it, in front of the engine's own words.
"""

from __future__ import annotations

import os

__all__ = ["file_problem"]


def file_problem(path: str, *, write: bool) -> str | None:
    """What stops ``path`` from being opened (``write``: for writing, creating it if missing).

    None when nothing is visibly wrong (the engine's message must then do).
    """
    directory = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return f"{path} is a directory, not a database file"
    if os.path.exists(path):
        if not os.access(path, os.R_OK):
            return f"no permission to read {path}"
        if write and not os.access(path, os.W_OK):
            return f"no permission to write {path} (open it with read_only=True to read it)"
        return None
    if not os.path.exists(directory):
        return f"directory {directory} does not exist"
    if not os.path.isdir(directory):
        return f"{directory} is not a directory"
    if not write:
        return f"{path} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"no permission to create {path} in directory {directory}"
    return None


def open_failure(path: str, error: object, *, write: bool) -> str:
    """The message for a failed open: the path, the cause in words, then the engine's words."""
    problem = file_problem(path, write=write)
    if problem is None:
        return f"cannot open {path}: {error}"
    return f"cannot open {path}: {problem} ({error})"
