"""One registry of generation engines and judge backends, each declaring what it can do.

``--backend`` of the generating commands (gen-questions, answer, eval, inspect) and of ``judge``
name entries here. An engine generates from (image, messages) behind the interface in
stmed.core.backend; a judge backend turns answer records into pairs (stmed.stages.judge).
``local`` is the ``hf`` engine used as a judge. Adding an engine touches this table and its own
module; the stages never learn which one runs. Pure Python: ``stmed --help`` imports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from stmed.api.openai_client import API_KEY_ENV, BASE_URL_HELP, CONCURRENCY  # the client's defaults, declared there
from stmed.errors import InputError, did_you_mean
from stmed.options import opt

GENERATE, JUDGE = "generate", "judge"


@dataclass(frozen=True)
class Entry:
    name: str
    about: str
    engine: str | None = None  # "module:attr" of the engine class (generation), imported on use
    judge: str | None = None  # "module:attr" of the judge runner, imported on use
    continues_as_user: bool = False  # raw prompt continuation: the vuser strategy needs it
    logprobs: bool = False  # next-token log-probabilities (the local judge's fallback)
    images: bool = True

    def can(self, role: str) -> bool:
        return (self.engine if role == GENERATE else self.judge) is not None

    def load(self, role: str):
        module, _, attr = (self.engine if role == GENERATE else self.judge).partition(":")
        return getattr(importlib.import_module(module), attr)


ENTRIES = {e.name: e for e in (
    Entry("hf", "a model loaded in this process (transformers): every family, exact tokens, CPU or GPU",
          engine="stmed.core.backend:HFBackend", judge="stmed.judge.local:run_local",
          continues_as_user=True, logprobs=True),
    Entry("vllm", "vLLM in this process (the fast path on GPUs; `make vllm-env`), same prompt ids as hf",
          engine="stmed.core.vllm_engine:VLLMEngine", continues_as_user=True, logprobs=True),
    Entry("openai", "an OpenAI-compatible server (api.openai.com, vLLM's server, Azure, gateways)",
          engine="stmed.backends.openai_backend:OpenAIBackend", judge="stmed.judge.online:run_online"),
    Entry("batch", "the OpenAI Batch API: request files out, replies in (also vllm run-batch)",
          judge="stmed.judge.batch:run_batch"),
)}
ALIASES = {"local": "hf"}  # judge --backend local: a VLM here (on the engine judge --engine names)


def names(role: str) -> list[str]:
    found = [n for n, e in ENTRIES.items() if e.can(role)]
    return found + [a for a, n in ALIASES.items() if role == JUDGE and ENTRIES[n].can(role)]


def lookup(name: str, role: str = GENERATE, flag: str | None = None) -> Entry:
    """The entry for ``name`` in ``role``, or one InputError line naming the flag and the choices."""
    flag = flag or ("--engine" if role == GENERATE else "--backend")
    entry = ENTRIES.get(ALIASES.get(name, name))
    choices = names(role)
    if entry is None:
        raise InputError(f"{flag} {name!r}: unknown{did_you_mean(name, choices)}; choose from {', '.join(choices)}")
    if not entry.can(role):
        what = "a judge backend, not an engine" if role == GENERATE else "an engine, not a judge backend (a local judge on it: --backend local --engine " + name + ")"
        raise InputError(f"{flag} {name}: {what}; choose from {', '.join(choices)}")
    return entry


def require(entry: Entry, capability: str, needed_by: str, instead: str = "") -> None:
    """One line naming the flag when ``needed_by`` asks for what the engine cannot do."""
    if not getattr(entry, capability):
        words = {"continues_as_user": "raw prompt continuation", "logprobs": "log-probabilities", "images": "images"}
        raise InputError(f"{needed_by} needs {words[capability]}, which --engine {entry.name} cannot do"
                         + (f"; {instead}" if instead else ""))


@dataclass
class EngineOptions:
    """How the generating commands run their model: the engine and its settings."""

    engine: str = opt("hf", "hf (transformers, here) | vllm (vLLM, here: the fast path on GPUs) | openai (an "
                      "OpenAI-compatible server).", flags=("--engine", "--backend"))
    batch_size: int = opt(8, "Generation batch size (hf: halved on out-of-memory; vllm: sequences in flight).",
                          min=1)
    static_cache: bool = opt(False, "hf on a GPU: static KV cache with compiled decode (fixed batch shapes).",
                             flags="--static-cache")
    tensor_parallel_size: int = opt(1, "vllm: GPUs one model copy is split over.", min=1)
    gpu_memory_utilization: float = opt(0.9, "vllm: share of each GPU's memory vLLM may take.", min=0.05, max=1.0)
    max_model_len: int | None = opt(None, "vllm: longest prompt + answer, in tokens (default: the model's).")
    enforce_eager: bool = opt(False, "vllm: no CUDA graphs (slower; less memory and start-up time).",
                              flags="--enforce-eager")
    base_url: str | None = opt(None, BASE_URL_HELP)
    api_key_env: str = opt(API_KEY_ENV, "Environment variable holding the API key.")
    concurrency: int = opt(CONCURRENCY, "Requests in flight (--engine openai).", min=1)

    def __post_init__(self) -> None:
        self.entry = lookup(self.engine, GENERATE, "--engine")


def open_engine(options: EngineOptions, spec):
    """The engine ``options`` name for the model in ``spec`` (stmed.core.model.ModelSpec); a local
    model loads here, after every input check. A record the engine fails on becomes that record's error."""
    entry = options.entry
    cls = entry.load(GENERATE)
    if entry.name == "hf":
        return cls(spec, batch_size=options.batch_size, static_cache=options.static_cache, isolate_failures=True)
    if entry.name == "vllm":
        return cls(spec, batch_size=options.batch_size, tensor_parallel_size=options.tensor_parallel_size,
                   gpu_memory_utilization=options.gpu_memory_utilization, max_model_len=options.max_model_len,
                   enforce_eager=options.enforce_eager)
    if not spec.model:
        raise InputError(f"--engine {entry.name} needs -m MODEL (the served model's name)")
    # A request that fails after its retries becomes that record's error, not the run's.
    return cls(spec.model, base_url=options.base_url, api_key_env=options.api_key_env,
               concurrency=options.concurrency, on_error="yield")
