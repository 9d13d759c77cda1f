"""Text as the page may show it: no absolute paths of this machine, no raw control characters.

Two kinds of text reach the page. What stmed itself wrote (error messages, ``where``, model ids,
image paths) loses every absolute path but its last part: ``/home/ana/runs/answers.jsonl:3``
becomes ``answers.jsonl:3``. What the model wrote (questions, answers, judge replies) is shown as
written, except that this machine's known folders (home, the working folder, the inputs'
folders) are cut out of it: a general rule there would also rewrite text such as ``/a/b``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

# /a/b, /a/b/c.jsonl, C:\a\b: at least one folder, not preceded by a word character (so "and/or"
# and "T1/T2" are left alone); the path runs until whitespace, a quote or a colon.
_ABSOLUTE = re.compile(r"(?<![\w.~])(?:[A-Za-z]:\\|/)(?:[^\s/\\:'\"<>|]+[/\\])+(?=[^\s/\\:'\"<>|])")
# C0 controls (but tab and newline), DEL and C1 controls become visible; lone surrogates, which
# json.loads can produce from "\ud800", cannot be written as UTF-8 at all.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    if c < 0x20:
        return chr(0x2400 + c)  # the Unicode "control picture" for that character
    return "\u2421" if c == 0x7F else "\ufffd"


def visible(text: str) -> str:
    """Control characters as their visible symbols (a random model writes plenty of them)."""
    return _CONTROL.sub(_visible, text)


class Scrubber:
    """Removes this machine's absolute paths from text bound for the page (unless ``keep_paths``)."""

    def __init__(self, roots: Iterable[Path] = (), *, keep_paths: bool = False):
        self.keep_paths = keep_paths
        found = {str(Path.cwd()), str(Path.home())}
        found.update(str(Path(r).resolve()) for r in roots)
        # longest first, so /a/b/c is cut before /a/b; "/" itself would cut every slash
        self.roots = sorted((r.rstrip(os.sep) for r in found if len(r.strip(os.sep)) > 0), key=len, reverse=True)

    def add_root(self, root: Path) -> None:
        r = str(Path(root).resolve()).rstrip(os.sep)
        if r.strip(os.sep) and r not in self.roots:
            self.roots = sorted([*self.roots, r], key=len, reverse=True)

    def text(self, value) -> str:
        """Model text: this machine's known folders cut out, controls made visible."""
        text = visible(str(value))
        if self.keep_paths:
            return text
        for root in self.roots:
            if root in text:  # /home/ana/x -> x and /home/ana alone -> ., but /home/anabel stays
                text = re.sub(re.escape(root) + r"(?:[/\\]|(?![^\s'\":,;)\]}>]))",
                              lambda m: "" if m.group().endswith(("/", "\\")) else ".", text)
        return text

    def meta(self, value) -> str:
        """stmed's own text (errors, where, model ids, paths): every absolute path cut to its last part."""
        text = self.text(value)
        return text if self.keep_paths else _ABSOLUTE.sub("", text)

    def path(self, value: str | Path) -> str:
        """A file's name for the page: relative to the working folder when under it, else its last part."""
        if self.keep_paths:
            return visible(str(value))
        p = Path(str(value))
        if not p.is_absolute():
            return visible(str(p))
        try:
            return visible(str(p.relative_to(Path.cwd())))
        except ValueError:
            return visible(p.name)
