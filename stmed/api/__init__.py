"""Chat APIs outside this process: the wire-level request and reply types, and the OpenAI
client (``openai_client``: one dataclass of client settings, tenacity retries).

The shared interface for "a model that generates from (image, messages)" is
``stmed.engines.base.Engine``; the openai engine (``stmed.engines.openai.OpenAIEngine``)
implements it on top of ``openai_client.OpenAIClient``. The LLM-judge core (stmed.judge.core), its cache and
its Batch API files work one level lower, on ``ChatRequest``/``ChatResult``, because they need
the exact request body (for cache keys and batch files) and the token usage of every reply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass
class ChatRequest:
    """Text messages plus at most one image, which goes with the first user turn.

    ``image`` is a PIL image for local models; ``image_url`` is the same pixels as a data URL for
    API models and ``image_sha`` its hash, which is what cache keys and logs see instead of bytes.
    """

    messages: list[dict]
    image: Any = None
    image_url: str | None = None
    image_sha: str | None = None
    n: int = 1
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 512
    seed: int | None = None
    response_format: dict | None = None
    stop: list[str] | None = None
    extra_body: dict | None = None  # server-specific fields (vLLM's top_k), sent as they are
    tag: Any = None  # the caller's handle (record id, order); never sent

    def params(self) -> dict:
        p = {"n": self.n, "temperature": self.temperature, "max_tokens": self.max_tokens}
        for k in ("top_p", "seed", "response_format", "stop"):
            if getattr(self, k) is not None:
                p[k] = getattr(self, k)
        return {**p, **(self.extra_body or {})}

    def cache_key(self, model: str, base_url: str | None = None) -> str:
        """sha256 of (server, model, messages with the image's hash, parameters): no bytes, no secrets.

        Two servers may serve different weights under one model name, so the base URL is part of
        the key; None (api.openai.com) leaves it out, which keeps keys from before this change."""
        body = {"model": model, "messages": self.messages, "image": self.image_sha, "params": self.params()}
        if base_url:
            body["base_url"] = base_url.rstrip("/")
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class ChatResult:
    texts: list[str]
    usage: Usage = field(default_factory=Usage)
    cached: bool = False

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""
