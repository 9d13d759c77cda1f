"""How stmed talks to an OpenAI-compatible server: ``ClientSettings``, the one dataclass of the
client's settings, their defaults and their help. Pure Python (the client itself, asyncio and the
openai SDK load in stmed.api.openai_client only when a request is made), so ``--help`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stmed.errors import InputError
from stmed.options import opt, option_fields

API_KEY_ENV = "OPENAI_API_KEY"
CONCURRENCY = 16
BASE_URL_HELP = "Server URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (default: api.openai.com)."


@dataclass
class ClientSettings:
    """How stmed talks to an OpenAI-compatible server: the one place these defaults and their help
    live. ``judge`` takes them as its flags; ``eval --open-judge`` as ``--open-judge-*`` flags
    (``client_flag``); the openai engine through ``OpenAIConfig``."""

    base_url: str | None = opt(None, BASE_URL_HELP)  # None: api.openai.com; else e.g. http://localhost:8000/v1 (vLLM)
    api_key_env: str = opt(API_KEY_ENV, "Environment variable holding the API key.")
    concurrency: int = opt(CONCURRENCY, "Requests in flight.", min=1)
    timeout: float = opt(120.0, "Seconds for one HTTP attempt.")
    max_request_seconds: float = opt(600.0, "Seconds for all retries of one request.", flags="--max-request-time")
    backoff_initial: float = 1.0  # first back-off in seconds; doubles each retry, with full jitter

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InputError(f"--concurrency {self.concurrency}: must be at least 1")
        if self.timeout <= 0 or self.max_request_seconds <= 0:
            raise InputError("--timeout and --max-request-time must be positive")


def client_flag(name: str, prefix: str | None = None):
    """An option field with ``ClientSettings.<name>``'s default and help, for a config that takes
    the setting as its own flag; ``prefix`` names the flags of a config whose command has the plain
    name already (eval's ``--open-judge-base-url`` beside the engine's ``--base-url``)."""
    f, o, _ = next(x for x in option_fields(ClientSettings) if x[0].name == name)
    if prefix is None:
        return opt(f.default, o.help, flags=o.flags, min=o.min, max=o.max)
    text = o.help if name == "base_url" else o.help[0].lower() + o.help[1:]  # a URL's description, or a sentence
    return opt(f.default, f"{prefix}: {text}", min=o.min, max=o.max)
