"""The OpenAI backend: any OpenAI-compatible chat server (OpenAI, Azure, vLLM, local gateways).

One retry policy, ours: the SDK's own retries are off (``max_retries=0``) and tenacity retries
429 (honouring Retry-After), 5xx, timeouts, dropped connections and unreadable bodies with
exponential back-off and jitter, inside a bounded total time per request. Each retry is logged
to stderr. The API key lives only in the SDK client: every message that leaves this module goes
through ``redact`` first.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

from stmed.api import ChatRequest, ChatResult, Usage
from stmed.api.settings import ClientSettings
from stmed.errors import InputError, RecordError, StmedError

T = TypeVar("T")


@dataclass
class OpenAIConfig(ClientSettings):
    """The client's whole configuration: the settings, the served model and the retry policy's limits."""

    model: str = "gpt-4o"  # the paper's judge
    max_attempts: int = 10
    backoff_max: float = 60.0
    max_retry_after: float = 300.0  # a longer Retry-After is capped, not obeyed blindly

    @classmethod
    def of(cls, settings: ClientSettings, model: str) -> OpenAIConfig:
        """The whole configuration for ``model`` from a config's client settings."""
        return cls(model=model, **{f.name: getattr(settings, f.name) for f in fields(ClientSettings)})


class RequestFailed(RecordError):
    """One request failed for good (retries spent, or a 4xx that retrying cannot fix)."""


class FatalBackendError(StmedError):
    """The server refuses every request (bad key, unknown model): stop instead of failing each record."""


def api_key_from_env(var: str, base_url: str | None) -> str:
    key = os.environ.get(var, "").strip()
    if key:
        return key
    if base_url:
        return "EMPTY"  # local servers (vLLM, gateways) usually take no key; the SDK needs a string
    raise InputError(f"no API key: set {var} (or name another variable with --api-key-env)")


_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{4,}|Bearer\s+\S+)")


def redact(text: str, secret: str | None) -> str:
    """Text with the key removed, whole or masked (servers echo 'sk-abc***xyz' in 401 bodies)."""
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)


def retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds a 429/503 asked us to wait: retry-after-ms, Retry-After seconds, or an HTTP date."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        parsed = email.utils.parsedate_tz(value)
        if parsed is not None:
            return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


def describe(exc: BaseException) -> str:
    """A short reason for logs: never the body of a response (it may echo the request)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "connection error"
    if isinstance(exc, openai.RateLimitError):
        return "429 rate limited"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return "unreadable response body"
    return type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.RateLimitError):
        body = exc.body if isinstance(exc.body, dict) else {}
        return body.get("code") != "insufficient_quota"  # an empty account will not refill by waiting
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code in (408, 409)
    return isinstance(exc, (openai.APIConnectionError, json.JSONDecodeError, openai.APIResponseValidationError))


def api_messages(req: ChatRequest) -> list[dict]:
    """OpenAI message list: the image goes as a content part of the first user turn."""
    out, placed = [], req.image_url is None
    for m in req.messages:
        if not placed and m["role"] == "user":
            parts = [{"type": "image_url", "image_url": {"url": req.image_url}}, {"type": "text", "text": m["content"]}]
            out.append({"role": "user", "content": parts})
            placed = True
        else:
            out.append(dict(m))
    return out


def request_body(req: ChatRequest, model: str) -> dict:
    """The chat-completions body; the Batch API files carry exactly this too."""
    return {"model": model, "messages": api_messages(req), **req.params()}


def result_from_completion(data: dict) -> ChatResult:
    """The texts and token counts of a chat-completion body; RequestFailed for a body of another
    shape (choices that are not objects, content that is not text), as servers and files can hold."""
    choices = data.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise RequestFailed("the reply's 'choices' is not a list of objects")
    texts = []
    for c in sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0):
        message = c.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str):
            raise RequestFailed(f"the reply's message content is {type(content).__name__}, not text")
        texts.append(content or "")
    u = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ChatResult(texts, Usage(_count(u.get("prompt_tokens")), _count(u.get("completion_tokens"))))


def _count(value) -> int:
    """A token count from a reply's usage: 0 where a server left it out or wrote something else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class OpenAIClient:
    """Async chat completions with a concurrency limit; ``generate`` wraps it for sync callers."""

    def __init__(self, cfg: OpenAIConfig, *, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.model = cfg.model
        self._key = api_key_from_env(cfg.api_key_env, cfg.base_url)
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._client = None
        self._sem: asyncio.Semaphore | None = None
        self._loop = None
        self.sent = 0  # HTTP attempts
        self.retries = 0
        self.usage = Usage()

    def redact(self, text: str) -> str:
        return redact(text, self._key)

    def log(self, line: str) -> None:
        self._log(self.redact(line))

    def _ensure(self):
        """Client and semaphore belong to one event loop; a new loop gets new ones."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            from openai import AsyncOpenAI

            self._client = AsyncOpenAI(
                api_key=self._key, base_url=self.cfg.base_url, max_retries=0, timeout=self.cfg.timeout
            )
            self._sem = asyncio.Semaphore(self.cfg.concurrency)
            self._loop = loop
        return self._client, self._sem

    @property
    def client(self):
        """The AsyncOpenAI client of the running loop (files and batches use it too)."""
        return self._ensure()[0]

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client, self._loop = None, None

    async def complete(self, req: ChatRequest) -> ChatResult:
        """One request with retries; raises RequestFailed, or FatalBackendError for auth/model errors."""
        import openai
        from tenacity import AsyncRetrying, RetryError, retry_if_exception, stop_after_attempt, stop_before_delay
        from tenacity import wait_random_exponential

        client, sem = self._ensure()
        body = request_body(req, self.model)
        extra = {k: body.pop(k) for k in list(req.extra_body or {})} or None  # the SDK takes unknown fields only here
        known = body
        backoff = wait_random_exponential(multiplier=self.cfg.backoff_initial, max=self.cfg.backoff_max)

        def wait(state) -> float:
            asked = retry_after_seconds(state.outcome.exception())
            return min(asked, self.cfg.max_retry_after) if asked is not None else backoff(state)

        def before_sleep(state) -> None:
            self.retries += 1
            why = describe(state.outcome.exception())
            self.log(f"stmed: {req.tag or 'request'}: attempt {state.attempt_number} failed ({why}); retrying in {state.next_action.sleep:.2f}s")

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait,
            stop=stop_after_attempt(self.cfg.max_attempts) | stop_before_delay(self.cfg.max_request_seconds),
            before_sleep=before_sleep,
        )
        started = time.monotonic()
        try:
            async for attempt in retrying:
                with attempt:
                    async with sem:
                        self.sent += 1
                        raw = await client.chat.completions.with_raw_response.create(**known, extra_body=extra)
                        data = json.loads(raw.http_response.text)  # raises on a garbled body: retried
                        if not isinstance(data, dict) or "choices" not in data:
                            raise json.JSONDecodeError("no choices in reply", raw.http_response.text[:50], 0)
        except RetryError as e:
            exc = e.last_attempt.exception()
            spent = time.monotonic() - started
            raise RequestFailed(
                self.redact(f"gave up after {e.last_attempt.attempt_number} attempts in {spent:.1f}s: {describe(exc)}")
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise FatalBackendError(
                self.redact(f"{self.cfg.base_url or 'api.openai.com'} refused the request ({describe(e)}): check the key and --judge-model")
            ) from None
        except openai.APIStatusError as e:
            raise RequestFailed(self.redact(f"server said {describe(e)}: {_short(e)}")) from None
        except Exception as e:  # a non-transient failure: report it, never with the request
            raise RequestFailed(self.redact(f"{describe(e)}")) from None
        result = result_from_completion(data)
        self.usage.add(result.usage)
        return result

    async def _agenerate(self, requests: Sequence[ChatRequest]) -> AsyncIterator[tuple[int, ChatResult | Exception]]:
        queue: asyncio.Queue = asyncio.Queue()

        async def one(i: int, r: ChatRequest) -> None:
            try:
                await queue.put((i, await self.complete(r)))
            except RequestFailed as e:
                await queue.put((i, e))
            except Exception as e:  # fatal: hand it over so the caller stops
                await queue.put((i, e))

        tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
        try:
            for _ in tasks:
                i, res = await queue.get()
                if isinstance(res, FatalBackendError):
                    raise res
                yield i, res
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def generate(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, ChatResult | Exception]]:
        return drive(self._agenerate(requests), self.aclose)


def _short(e) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    msg = err.get("message") if isinstance(err, dict) else None
    return (str(msg) if msg else str(e))[:200]


def drive(agen: AsyncIterator[T], close=None) -> Iterator[T]:
    """Iterate an async generator from sync code on a private event loop.

    Between items the loop is paused while the caller writes its output; the requests in flight
    keep their sockets and resume on the next step. Ctrl-C lands in the caller, and the finally
    block cancels what is in flight so nothing is written twice.
    """
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                break
    finally:
        try:
            loop.run_until_complete(agen.aclose())
            if close is not None:
                loop.run_until_complete(close())
        except BaseException:  # noqa: BLE001 - shutting down after an interrupt: nothing left to save
            pass
        loop.close()
