"""Every prompt stmed sends, with a name and version recorded in outputs.

Any template can be replaced from a text file (``--prompt-file NAME=PATH`` style options in the
commands); a replaced prompt is recorded with version "file:<sha256 prefix>" so outputs still
say exactly what made them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from stmed.errors import InputError


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    version: str

    def record(self) -> dict:
        return {"name": self.name, "version": self.version}


# STLLaVA-Med's first turn: the policy describes the image in detail, greedily.
DESCRIBE = Prompt("describe", "Describe the image in detail.", "1")

# The paper's system prompt for self-questioning, in our words: the assistant is also a
# curious virtual user who asks complex, relevant questions and avoids uncertain details.
VUSER_SYSTEM = Prompt(
    "vuser-system",
    "You are a helpful medical imaging assistant. You are also a curious virtual user: after "
    "describing an image you ask complex, relevant questions about what it shows, one at a time, "
    "and you avoid asking about details that cannot be seen with certainty.",
    "1",
)

# The `instruct` strategy: ask for one question in an ordinary user turn.
INSTRUCT_ASK = Prompt(
    "instruct-ask",
    "Ask one complex, relevant question about this medical image that a curious clinician would "
    "ask and that the image can answer. Reply with the question only.",
    "1",
)

# Evaluation: `free` sends the question as is (as the papers did); `short` asks for a phrase.
SHORT_SUFFIX = Prompt("short", "Answer with a single word or phrase.", "1")

BUILTIN = {p.name: p for p in (DESCRIBE, VUSER_SYSTEM, INSTRUCT_ASK, SHORT_SUFFIX)}


def from_file(name: str, path: str | Path) -> Prompt:
    """A prompt replaced by the contents of a file, versioned by its content hash."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: prompt file not found")
    text = p.read_text(encoding="utf-8").strip()
    if not text:
        raise InputError(f"{p}: prompt file is empty")
    return Prompt(name, text, "file:" + hashlib.sha256(text.encode()).hexdigest()[:12])


def get(name: str, override: str | Path | None = None) -> Prompt:
    if override is not None:
        return from_file(name, override)
    return BUILTIN[name]


def file_option(name: str, builtin: bool = True):
    """The parser of a ``--...-prompt FILE`` option: the file's prompt, or (no file) the built-in
    one, or None where the prompt is optional (``builtin=False``)."""
    if builtin:
        return lambda path: get(name, path)
    return lambda path: from_file(name, path) if path else None


def vuser_context(description: str, system: Prompt = VUSER_SYSTEM, describe: Prompt = DESCRIBE) -> list[dict]:
    """The conversation after which the model, continuing as the user, asks its own question."""
    return [
        {"role": "system", "content": system.text},
        {"role": "user", "content": describe.text},
        {"role": "assistant", "content": description},
    ]
