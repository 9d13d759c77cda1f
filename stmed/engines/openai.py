"""The openai engine (``--engine openai``): an OpenAI-compatible server behind stmed's engine
interface, for `answer`, `gen-questions` (instruct) and `eval`.

Each recorded seed becomes its own request (``n=1, seed=s``), so a sample is reproducible on
servers that honour seeds (vLLM does) and the seeds in the output mean what they say. A request
that still fails after the client's retries is not silently turned into an empty answer: with
``on_error="raise"`` (the default) every other output is delivered first and then one
``RequestFailed`` names how many failed; ``on_error="yield"`` hands the exception over in place
of the output, for stages that send such records to their errors file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from stmed.api import ChatRequest
from stmed.api.settings import API_KEY_ENV, CONCURRENCY, client_flag
from stmed.engines.base import settings
from stmed.errors import InputError
from stmed.images import encode_for_api
from stmed.options import opt


@dataclass
class OpenAISettings:
    base_url: str | None = client_flag("base_url")  # the client's settings: defaults and help in ClientSettings
    api_key_env: str = client_flag("api_key_env")
    concurrency: int = opt(CONCURRENCY, "Requests in flight (--engine openai).", min=1)


class OpenAIEngine:
    name = "openai"
    processor = None  # the server renders its own prompts; chat APIs only answer as the assistant

    @classmethod
    def from_options(cls, options, spec) -> OpenAIEngine:
        if not spec.model:
            raise InputError("--engine openai needs -m MODEL (the served model's name)")
        # A request that fails after its retries becomes that record's error, not the run's.
        return cls(spec.model, on_error="yield", **settings(OpenAISettings, options))

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = API_KEY_ENV,
                 concurrency: int = CONCURRENCY, max_side: int = 1024, on_error: str = "raise", **client_options):
        from stmed.api.openai_client import OpenAIClient, OpenAIConfig  # asyncio: not for --help

        self.client = OpenAIClient(OpenAIConfig(model=model, base_url=base_url, api_key_env=api_key_env,
                                                concurrency=concurrency, **client_options))
        self.model, self.base_url, self.max_side, self.on_error = model, base_url, max_side, on_error
        self.batch_size = concurrency  # stages size their units of work to keep every slot busy

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model, **({"base_url": self.base_url} if self.base_url else {})}

    def _chat_requests(self, i: int, req, params) -> list[ChatRequest]:
        if req.prompt is not None or req.continue_as != "assistant":
            raise ValueError("the openai backend cannot continue a raw prompt or the user's turn")
        url = sha = None
        if req.image is not None:
            url, sha = encode_for_api(req.image, self.max_side)
        extra = {"top_k": params.top_k} if params.top_k and self.base_url else None  # api.openai.com rejects top_k
        common = dict(image_url=url, image_sha=sha, temperature=params.temperature, max_tokens=params.max_new_tokens,
                      top_p=None if params.top_p >= 1.0 else params.top_p, stop=list(params.stop)[:4] or None,
                      extra_body=extra)
        seeds = list(req.seeds)
        if all(s is None for s in seeds):  # greedy or unseeded: one request with n samples
            return [ChatRequest(req.messages, n=len(seeds), tag=f"request {i}", **common)]
        return [ChatRequest(req.messages, seed=s, tag=f"request {i} seed {s}", **common) for s in seeds]

    def generate(self, requests: Sequence, params) -> Iterator[tuple[int, object]]:
        from stmed.core.generate import GenOutput

        flat: list[tuple[int, int, ChatRequest]] = []  # (request index, sample slot, chat request)
        for i, req in enumerate(requests):
            for k, c in enumerate(self._chat_requests(i, req, params)):
                flat.append((i, k, c))
        parts: dict[int, dict[int, object]] = {}
        need = {i: sum(1 for f in flat if f[0] == i) for i in range(len(requests))}
        failed: list[str] = []
        for j, res in self.client.generate([c for _, _, c in flat]):
            i, k, _ = flat[j]
            parts.setdefault(i, {})[k] = res
            if len(parts[i]) < need[i]:
                continue
            got = [parts[i][k] for k in sorted(parts[i])]
            bad = next((r for r in got if isinstance(r, Exception)), None)
            if bad is not None:
                failed.append(str(bad))
                if self.on_error == "yield":
                    yield i, bad
                continue
            texts = [t for r in got for t in r.texts]
            yield i, GenOutput(texts, [r.usage.completion_tokens // max(len(r.texts), 1) for r in got for _ in r.texts])
        if failed and self.on_error == "raise":
            from stmed.api.openai_client import RequestFailed

            raise RequestFailed(f"{len(failed)} of {len(requests)} requests failed; first: {failed[0]}")
