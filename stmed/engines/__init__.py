"""Every engine in one place: a model that generates from (image, messages), behind one interface
(stmed.engines.base.Engine).

    hf      stmed.engines.hf      transformers in this process: every family, exact tokens, CPU or GPU
    vllm    stmed.engines.vllm    vLLM in this process: the fast path on GPUs, same prompt ids as hf
    openai  stmed.engines.openai  an OpenAI-compatible server

Each engine declares its settings as its own dataclass; ``EngineOptions`` is the flags of the
generating commands: the engine's name, the batch size, and every engine's settings. The
registry (stmed.registry) names the engines and what they can do; ``open_engine`` builds the one
the options name through its ``from_options``. Pure Python: ``stmed --help`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stmed import registry
from stmed.engines.hf import HFSettings
from stmed.engines.openai import OpenAISettings
from stmed.engines.vllm import VLLMSettings
from stmed.options import opt


@dataclass
class Engine:
    engine: str = opt("hf", "hf (transformers, here) | vllm (vLLM, here: the fast path on GPUs) | openai (an "
                      "OpenAI-compatible server).", flags="--engine")
    batch_size: int = opt(8, "Generation batch size (hf: halved on out-of-memory; vllm: sequences in flight).",
                          min=1)


@dataclass
class EngineOptions(OpenAISettings, VLLMSettings, HFSettings, Engine):
    """How the generating commands run their model: the engine, then each engine's settings."""

    def __post_init__(self) -> None:
        self.entry = registry.lookup(self.engine, registry.GENERATE, "--engine")


def open_engine(options: EngineOptions, spec):
    """The engine ``options`` name for the model in ``spec`` (stmed.core.model.ModelSpec); a local
    model loads here, after every input check. A record the engine fails on becomes that record's error."""
    return options.entry.load(registry.GENERATE).from_options(options, spec)
