"""One interface for "a model that generates from (image, messages)": an engine.

The in-process Hugging Face model and any OpenAI-compatible server implement it, so stages
(questions, answers, evaluation, the local judge) never care which one runs. Engines are
chosen by name from stmed.registry, which also says what each can do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from stmed.core.generate import GenOutput, GenRequest, Generator, SamplingParams


class Backend(Protocol):
    name: str  # its stmed.registry entry, which declares what it can do
    processor: Any  # the local model's processor (chat template, tokenizer); None for a server
    batch_size: int  # requests it works on at once: stages size their units of work by it

    def generate(self, requests: Sequence[GenRequest], params: SamplingParams) -> Iterator[tuple[int, GenOutput]]: ...

    def describe(self) -> dict: ...


class HFBackend:
    """The shared core: a model loaded once in this process, batched generation."""

    name = "hf"

    def __init__(self, spec, batch_size: int = 8, static_cache: bool = False, isolate_failures: bool = False):
        from stmed.core.model import load_model

        self.loaded = load_model(spec)
        self.generator = Generator(self.loaded, batch_size, static_cache=static_cache,
                                   isolate_failures=isolate_failures)

    @property
    def batch_size(self) -> int:
        return self.generator.batch_size

    @property
    def processor(self):
        return self.loaded.processor

    def generate(self, requests, params):
        return self.generator.run(requests, params)

    def choice_logprobs(self, requests, choices, batch_size: int = 8) -> list[dict]:
        """The log-probability of each choice right after each prompt (the local judge's fallback)."""
        from stmed.core.generate import choice_logprobs

        return choice_logprobs(self.loaded, requests, choices, batch_size=batch_size)

    def describe(self) -> dict:
        return {"backend": self.name, **self.loaded.describe()}
