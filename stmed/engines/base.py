"""What every engine shares: the interface, and settings picked out of the command's options.

An engine is "a model that generates from (image, messages)". Stages (questions, answers,
evaluation, the local judge) only see this interface, so they never care which engine runs.
Each engine declares its own settings dataclass (its flags, stmed.options) and builds itself
from the options with ``from_options``, so the registry opens any engine without naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class Engine(Protocol):
    name: str  # its stmed.registry entry, which declares what it can do
    processor: Any  # the local model's processor (chat template, tokenizer); None for a server
    batch_size: int  # requests it works on at once: stages size their units of work by it

    def generate(self, requests: Sequence, params) -> Iterator[tuple[int, Any]]: ...

    def describe(self) -> dict: ...


def settings(cls, options) -> dict:
    """The values ``options`` holds for the fields of the settings dataclass ``cls``, as keywords."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(cls)}
