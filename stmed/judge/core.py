"""The LLM-judge core: one judge model behind one backend, chat requests in, parsed replies out.

Every judge in stmed asks through here: the pairwise judge (``stmed judge``), the open-answer
judge (``stmed eval --open-judge``) and any reward that asks a judge model (``JudgeCore.ask_all``:
(image, messages) requests in, parsed scores out). The core owns what they share:

- the OpenAI client (stmed.api.openai_client: one ``ClientSettings``, tenacity retries), opened
  on first use, or the local engine (``--engine hf|vllm``), loaded on first use;
- the reply cache (judge.cache), keyed by ``ChatRequest.cache_key``; only replies that parse
  are stored, so an unparseable one is asked again on the next run;
- ask, and ask once more when the reply cannot be parsed (API backends; a local model, whose
  replies repeat for the same seed, gets a log-probability choice instead: ``choose``);
- the spend (``JudgeStats``: requests, cache hits, re-asks, retries, tokens);
- the concurrency window: units of work (a record, an item) in flight at once, each unit's
  requests bounded again by the client's ``concurrency``.

The Batch API's rounds of request files are ``judge.batch.BatchRound``, on the same core.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from stmed.api import ChatRequest, ChatResult
from stmed.api.settings import ClientSettings
from stmed.errors import RecordError
from stmed.judge.cache import NoCache
from stmed.judge.cost import JudgeStats

Parse = Callable[[str], Any]  # a reply's text -> its parsed value, or None when it holds none
SEED = 0  # sampling local judges (temperature > 0) draw from this seed, so a rerun gives the same verdicts


@dataclass
class Reply:
    """What came of one request: ``value`` is what ``parse`` made of the reply (None: nothing)."""

    value: Any
    text: str | None  # the reply; after a re-ask, the second one
    source: str  # cache | api | batch | local
    error: str | None = None  # the request failed for good (retries spent, a 4xx)


class JudgeCore:
    """One judge model (``model``) on one backend: ``openai`` (any OpenAI-compatible server),
    ``batch`` (the Batch API; through ``judge.batch.BatchRound``) or ``local`` (``engine`` opens
    the local engine on first use)."""

    def __init__(self, model: str, backend: str = "openai", *, client: ClientSettings | None = None, cache=None,
                 stats: JudgeStats | None = None, engine: Callable[[], Any] | None = None, batch_size: int = 8):
        self.model, self.backend = model, backend
        self.settings = client or ClientSettings()
        self.cache = cache if cache is not None else NoCache()
        self.stats = stats if stats is not None else JudgeStats()
        self.batch_size = batch_size  # local: generation batch size
        self._open_engine, self._engine, self._client = engine, None, None

    # ---------------------------------------------------------------- cache and spend

    def key(self, req: ChatRequest) -> str:
        return req.cache_key(self.model, self.settings.base_url)

    def cached(self, req: ChatRequest, parse: Parse) -> Reply | None:
        """The cached reply to ``req`` when it parses; counted as a cache hit."""
        hit = self.cache.get(self.key(req))
        if hit is not None and (value := parse(hit.text)) is not None:
            self.stats.cache_hits += 1
            return Reply(value, hit.text, "cache")
        return None

    def paid(self, req: ChatRequest, result: ChatResult, parse: Parse, source: str) -> Reply:
        """A reply paid for: its usage counted, and cached when it parses."""
        self.stats.requests += 1
        self.stats.usage.add(result.usage)
        value = parse(result.text)
        if value is not None:
            self.cache.put(self.key(req), self.model, result)
        return Reply(value, result.text, source)

    # ---------------------------------------------------------------- the OpenAI-compatible server

    @property
    def client(self):
        if self._client is None:
            from stmed.api.openai_client import OpenAIClient, OpenAIConfig

            self._client = OpenAIClient(OpenAIConfig.of(self.settings, self.model))
        return self._client

    async def ask(self, req: ChatRequest, parse: Parse) -> Reply:
        """The cached reply, else the server's; a reply that cannot be parsed is asked once more,
        and the second comes back as it is (``value`` None). A request that fails for good raises
        RequestFailed (a RecordError); a server that refuses every request, FatalBackendError."""
        hit = self.cached(req, parse)
        if hit is not None:
            return hit
        for attempt in range(2):
            if attempt:
                self.stats.reasks += 1
            reply = self.paid(req, await self.client.complete(req), parse, "api")
            if reply.value is not None:
                break
        return reply

    def run(self, units: Sequence, work: Callable[[Any], Awaitable[Any]], window: int | None = None) -> Iterator:
        """``work(unit)`` for every unit on one event loop, at most ``window`` units in flight (each
        unit's requests bounded again by the client's concurrency), results in the order they end.
        An exception in ``work`` stops the run and is raised here."""
        from stmed.api.openai_client import drive

        window = window or max(8, 2 * self.settings.concurrency)  # units in flight: bounds memory for images
        try:
            yield from drive(_windowed(units, work, window), self.aclose)
        finally:
            if self._client is not None:
                self.stats.retries = self._client.retries

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # ---------------------------------------------------------------- a local model

    @property
    def engine(self):
        if self._engine is None:
            assert self._open_engine is not None, "a local judge core needs an engine to open"
            self._engine = self._open_engine()
        return self._engine

    def generate(self, requests: Sequence[ChatRequest], max_tokens: int, temperature: float) -> list:
        """The local model's reply text to each request, or the exception it failed with; replies
        are not cached (a rerun costs no money)."""
        from stmed.core.generate import GenRequest, SamplingParams

        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature)
        seeds = [None] if params.greedy else [SEED]
        gen = [GenRequest(r.messages, r.image, seeds=seeds) for r in requests]
        out: list = [None] * len(requests)
        for k, res in self.engine.generate(gen, params):
            if isinstance(res, Exception):
                out[k] = res
                continue
            self.stats.requests += 1
            self.stats.usage.completion_tokens += res.total_tokens
            out[k] = res.texts[0]
        return out

    def choose(self, requests: Sequence[ChatRequest], choices: Sequence[str]) -> list[dict]:
        """The local model's log-probability of each choice as the first words of its reply."""
        from stmed.core.generate import GenRequest

        self.stats.logprob_fallbacks += len(requests)
        return self.engine.choice_logprobs([GenRequest(r.messages, r.image, seeds=[None]) for r in requests],
                                           list(choices), batch_size=self.batch_size)

    # ---------------------------------------------------------------- any backend, from sync code

    def ask_all(self, requests: Sequence[ChatRequest], parse: Parse, *, choices: Callable | None = None) -> list[Reply]:
        """One Reply per request, in order, on this core's backend: the call a reward model makes.
        ``choices`` (local only): ``(choices, pick)``; where a local reply does not parse, the
        choice ``pick`` makes of their log-probabilities is the value (source ``logprob``)."""
        if self.backend == "local":
            return self._ask_local(requests, parse, choices)
        if self.backend == "batch":
            raise ValueError("the batch backend asks in rounds of files: use judge.batch.BatchRound")
        return self._ask_online(requests, parse)

    def _ask_online(self, requests: Sequence[ChatRequest], parse: Parse) -> list[Reply]:
        async def one(k: int) -> tuple[int, Reply]:
            try:
                return k, await self.ask(requests[k], parse)
            except RecordError as e:  # retries spent, or a 4xx that retrying cannot fix
                return k, Reply(None, None, "api", error=str(e))

        out: list[Reply] = [None] * len(requests)  # type: ignore[list-item]
        for k, reply in self.run(range(len(requests)), one):
            out[k] = reply
        return out

    def _ask_local(self, requests: Sequence[ChatRequest], parse: Parse, choices) -> list[Reply]:
        first = requests[0] if requests else None
        texts = self.generate(requests, first.max_tokens if first else 1, first.temperature if first else 0.0)
        out = [Reply(None, None, "local", error=str(t)) if isinstance(t, Exception) else Reply(parse(t), t, "local")
               for t in texts]
        retry = [k for k, r in enumerate(out) if r.error is None and r.value is None]
        if retry and choices is not None:
            options, pick = choices
            for k, lp in zip(retry, self.choose([requests[k] for k in retry], options)):
                value, note = pick(lp)
                out[k] = Reply(value, f"{out[k].text}\n[log-prob fallback: {note}]", "logprob")
        return out


async def _windowed(units: Sequence, work: Callable[[Any], Awaitable[Any]], window: int) -> AsyncIterator:
    queue: asyncio.Queue = asyncio.Queue()
    slots = asyncio.Semaphore(window)
    tasks: list[asyncio.Future] = []

    async def one(unit) -> None:
        try:
            result: Any = await work(unit)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - fatal errors and bugs go to the consumer, not lost in a task
            result = _Raised(e)
        slots.release()
        await queue.put(result)

    async def feed() -> None:
        for unit in units:
            await slots.acquire()
            tasks.append(asyncio.ensure_future(one(unit)))

    feeder = asyncio.ensure_future(feed())
    try:
        for _ in range(len(units)):
            item = await queue.get()
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        for t in [feeder, *tasks]:
            t.cancel()
        await asyncio.gather(feeder, *tasks, return_exceptions=True)


@dataclass
class _Raised:
    error: BaseException
