"""Where stmed keeps what later runs reuse: the cache root.

``STMED_CACHE_DIR`` names it (default ``$XDG_CACHE_HOME/stmed``, else ``~/.cache/stmed``). The
judge's reply cache (``judge-cache.sqlite``) and parquet benchmarks' images (``parquet-images/``)
live under it. ``STMED_HOME``, the judge cache's old variable, is still read for one more
release when ``STMED_CACHE_DIR`` is not set, with a one-line note.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

CACHE_ENV = "STMED_CACHE_DIR"
OLD_CACHE_ENV = "STMED_HOME"


def cache_root() -> Path:
    """The folder stmed caches in (not created here: whoever writes into it does)."""
    root = os.environ.get(CACHE_ENV) or os.environ.get(OLD_CACHE_ENV)
    if root and not os.environ.get(CACHE_ENV):
        _note_old_name()
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stmed"


@functools.cache
def _note_old_name() -> None:
    from stmed.errors import renamed

    renamed(OLD_CACHE_ENV, CACHE_ENV)  # once per process, however often the root is asked for
