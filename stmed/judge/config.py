"""The judge's settings (``stmed judge``'s flags): which backend asks which model, the pair policy,
the prompt, and each backend's own settings (``BatchOptions``: the Batch API's files). The
backends (online, batch, local) read them; the judge stage (stmed.stages.judge) runs them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from stmed import registry
from stmed.api.settings import ClientSettings, client_flag
from stmed.core.model import ModelSpec
from stmed.errors import InputError
from stmed.judge.prompt import JudgePrompt
from stmed.judge.verdict import POLICIES
from stmed.options import MAX_PIXELS_HELP, opt


@dataclass
class BatchOptions:
    """Where a round's files go and how they are sent (``judge --backend batch``'s flags)."""

    folder: Path
    client: ClientSettings = field(default_factory=ClientSettings)
    max_requests: int = 50_000  # OpenAI's per-file limit
    max_bytes: int = 190 * 1024 * 1024  # under OpenAI's 200 MB file limit
    poll_interval: float = 30.0  # seconds between status polls
    prepare_only: bool = False  # write the request files and stop (for vllm run-batch)
    collected: dict | None = None  # replies already read from output files (--collect): nothing is sent


@dataclass
class JudgeConfig:
    backend: str = opt("openai", "openai (any OpenAI-compatible server) | batch (OpenAI Batch API) | local (a VLM here).")
    judge_model: str = opt("gpt-4o", "Served model name, or for local a HF id or folder (paper: gpt-4o).",
                           flags="--judge-model")
    # the client's settings (ClientSettings holds their defaults and help); None is api.openai.com
    base_url: str | None = client_flag("base_url")
    api_key_env: str = client_flag("api_key_env")
    concurrency: int = client_flag("concurrency")
    policy: str = opt("swap", "swap: judge both orders, keep agreeing pairs | paper: the original single-order rule.")
    min_margin: float = opt(1.0, "swap: averaged score gap (1-10 scale) a pair needs.")
    temperature: float = opt(0.2, "Judge temperature (paper: 0.2).")
    max_tokens: int = opt(300, "Judge reply length limit (two scores and a short reason).")
    max_side: int = opt(1024, "Longest image side sent to the judge, in pixels.")
    # auto: ask for JSON (response_format) from api.openai.com only
    response_format: str = opt("auto", "Ask for the reply as JSON (response_format): auto (api.openai.com only) | json | text.")
    prompt_file: str | None = opt(None, "Template replacing the judge prompt ({question}, {answer_1}, {answer_2}).",
                                  type=Optional[Path], parse=lambda p: str(p) if p else None)
    image_root: Path | None = opt(None, "Folder that relative image paths resolve against.", metavar="DIR")
    timeout: float = client_flag("timeout")
    max_request_seconds: float = client_flag("max_request_seconds")
    backoff_initial: float = ClientSettings.backoff_initial
    # local backend: the judge model's loading flags (adapter, device, dtype, ...) are the shared model flags
    local: ModelSpec = field(default_factory=ModelSpec)
    engine: str = opt("hf", "local: the engine the judge model runs on: hf (transformers) | vllm.")
    batch_size: int = opt(8, "local: generation batch size (halved on out-of-memory).", min=1)
    max_pixels: int | None = opt(None, MAX_PIXELS_HELP, min=784)
    # batch backend
    batch_dir: Path | None = opt(None, "batch: folder for request/output files (default OUTPUT.batch/).", metavar="DIR")
    prepare_only: bool = opt(False, "batch: write request files and stop (for vllm run-batch).", flags="--prepare-only")
    collect: list[str] = opt(help="batch: build pairs from this Batch output file (repeatable).", factory=list,
                             type=Optional[list[Path]], parse=lambda ps: [str(p) for p in ps or []], flag_default=None)
    poll_interval: float = opt(BatchOptions.poll_interval, "batch: seconds between status polls.")
    max_batch_requests: int = BatchOptions.max_requests
    max_batch_bytes: int = BatchOptions.max_bytes
    # hard negatives (stmed.stages.hard_negative): the rejected side is the corrupted image's answer
    hard_negative: str | None = opt(None, "corrupt: pair each record's first answer (chosen) with its first answer on "
                                    "the corrupted image (rejected), from stmed answer --corrupt.")
    confirm: bool = opt(True, "--hard-negative: keep a pair only when the judge prefers the real-image answer by "
                        "--min-margin; --no-confirm: keep every pair, no judge call (margin null).",
                        flags="--confirm/--no-confirm")
    collected: dict | None = field(default=None, repr=False)  # the --collect files once read (the CLI reads them first)

    def __post_init__(self) -> None:
        self.entry = registry.lookup(self.backend, registry.JUDGE)  # an unknown name: one line, "did you mean"
        registry.require(registry.lookup(self.engine, flag="--engine"), "logprobs", "the local judge's fallback")
        if self.policy not in POLICIES:
            raise InputError(f"--policy {self.policy!r}: expected one of {', '.join(POLICIES)}")
        if self.response_format not in ("auto", "json", "text"):
            raise InputError(f"--response-format {self.response_format!r}: expected auto, json or text")
        if self.min_margin < 0:
            raise InputError("--min-margin must be 0 or more")
        if self.hard_negative not in (None, "corrupt"):
            raise InputError(f"--hard-negative {self.hard_negative!r}: expected corrupt")
        if not self.confirm and self.hard_negative is None:
            raise InputError("--no-confirm needs --hard-negative (an unjudged pair needs a known worse answer)")
        self.prompt = JudgePrompt.from_file(self.prompt_file) if self.prompt_file else JudgePrompt()

    @property
    def local_model(self) -> bool:
        """A judge model loaded here (--backend local), not one behind an API."""
        return self.entry.name == "hf"

    @property
    def use_json(self) -> bool:
        if self.local_model:  # a local model reads plain text
            return False
        return self.response_format == "json" or (self.response_format == "auto" and self.base_url is None)

    def client_settings(self) -> ClientSettings:
        """How the openai and batch backends reach the server."""
        return ClientSettings(base_url=self.base_url, api_key_env=self.api_key_env, concurrency=self.concurrency,
                              timeout=self.timeout, max_request_seconds=self.max_request_seconds,
                              backoff_initial=self.backoff_initial)

    def model_spec(self) -> ModelSpec:
        """The local judge model, loaded by its engine (--engine) like any other model."""
        return replace(self.local, model=self.judge_model)

    @property
    def asks(self) -> bool:
        """Whether this run asks a judge at all (not for unconfirmed hard negatives)."""
        return self.hard_negative is None or self.confirm

    def describe(self) -> dict:
        """The settings recorded in every output and in _meta (no secrets: the key is never here)."""
        if not self.asks:
            return {"hard_negative": self.hard_negative, "confirm": False}
        return {**({"hard_negative": self.hard_negative} if self.hard_negative else {}),
                "model": self.judge_model, "prompt_version": self.prompt.version, "policy": self.policy,
                "min_margin": self.min_margin, "temperature": self.temperature, "backend": self.backend,
                **({"engine": self.engine} if self.local_model and self.engine != "hf" else {})}
