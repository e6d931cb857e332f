"""How a config key is declared: once, in the section that owns it, with its default, its help
line and its limits (``vox2vox.config`` checks them generically and ``config --defaults`` and the
manual print the help). Its own module under ``data/``, the lowest layer, so that every section
(``data/``, ``model/`` and the config's own) can import it.

Types and choices are the field's annotation (``Literal[...]`` for choices), checked by
``vox2vox.config``'s typed construction.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def setting(default: Any, help: str, *, at_most: int | None = None,
            within: tuple[float, float] | None = None) -> Any:
    """A section's field: ``default``, the one-line ``help``, and optionally ``at_most`` (an upper
    bound for sizes that build networks and batches: far beyond any real setup, small enough that a
    typo is one clear error instead of a hang) or ``within`` (a closed range for floats whose absurd
    values train garbage without an error)."""
    return dataclasses.field(default=default, metadata={"help": help, "at_most": at_most, "within": within})


def help_of(field: dataclasses.Field) -> str:
    return str(field.metadata.get("help", ""))
