"""One registry of generation engines and judge backends, each declaring what it can do.

``--engine`` (wherever a model generates: gen-questions, answer, eval, inspect, the local judge)
names an engine here; ``judge --backend`` names a judge transport (openai, batch, local). An
engine generates from (image, messages) behind the interface in stmed.engines; a judge backend
turns answer records into pairs (stmed.stages.judge). ``local`` is a local engine used as a
judge. Adding an engine touches this table, its own module in stmed/engines/ and the
EngineOptions bases there; the stages never learn which one runs. Pure Python: ``stmed --help``
imports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from stmed.errors import InputError, did_you_mean, renamed

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
          engine="stmed.engines.hf:HFEngine", judge="stmed.judge.local:run_local",
          continues_as_user=True, logprobs=True),
    Entry("vllm", "vLLM in this process (the fast path on GPUs; `make vllm-env`), same prompt ids as hf",
          engine="stmed.engines.vllm:VLLMEngine", continues_as_user=True, logprobs=True),
    Entry("openai", "an OpenAI-compatible server (api.openai.com, vLLM's server, Azure, gateways)",
          engine="stmed.engines.openai:OpenAIEngine", judge="stmed.judge.online:run_online"),
    Entry("batch", "the OpenAI Batch API: request files out, replies in (also vllm run-batch)",
          judge="stmed.judge.batch:run_batch"),
)}
ALIASES = {"local": "hf"}  # judge --backend local: a VLM here (on the engine judge --engine names)
OLD_JUDGE_NAMES = {"hf": "local"}  # judge --backend hf: read for one more release, with a note


def names(role: str) -> list[str]:
    if role == JUDGE:
        return [n for n, e in ENTRIES.items() if e.can(role) and n not in OLD_JUDGE_NAMES] + list(ALIASES)
    return [n for n, e in ENTRIES.items() if e.can(role)]


def lookup(name: str, role: str = GENERATE, flag: str | None = None) -> Entry:
    """The entry for ``name`` in ``role``, or one InputError line naming the flag and the choices."""
    flag = flag or ("--engine" if role == GENERATE else "--backend")
    if role == JUDGE and name in OLD_JUDGE_NAMES:
        renamed(f"{flag} {name}", f"{flag} {OLD_JUDGE_NAMES[name]}")
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
