"""The hf engine (``--engine hf``): a transformers model loaded once in this process.

The reference engine: every family, exact tokens, CPU and GPU; batched generation through
stmed.core.generate (length-sorted batches, one shared prefill per prompt, seeded samples).
"""

from __future__ import annotations

from dataclasses import dataclass

from stmed.core.generate import Generator
from stmed.engines.base import settings
from stmed.options import opt


@dataclass
class HFSettings:
    static_cache: bool = opt(False, "hf on a GPU: static KV cache with compiled decode (fixed batch shapes).",
                             flags="--static-cache")


class HFEngine:
    """The shared core: a model loaded once in this process, batched generation."""

    name = "hf"

    @classmethod
    def from_options(cls, options, spec) -> HFEngine:
        # a record the model fails on becomes that record's error, not the run's
        return cls(spec, batch_size=options.batch_size, isolate_failures=True, **settings(HFSettings, options))

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
