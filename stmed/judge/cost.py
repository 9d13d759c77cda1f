"""Token usage and estimated cost of a judge run.

Prices are USD per million tokens (input, output), OpenAI list prices as published in 2025;
they change, so ``--prices FILE`` (JSON ``{"model": [input, output]}``) or ``--price IN,OUT``
override them. The Batch API bills half. A model missing from the table (a local vLLM server,
say) has no estimate rather than a wrong one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from stmed.api import Usage
from stmed.errors import InputError

PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "o4-mini": (1.10, 4.40),
}
BATCH_DISCOUNT = 0.5


def load_prices(path: str | Path | None = None, price: str | None = None, model: str | None = None) -> dict:
    table = dict(PRICES)
    if path is not None:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise InputError(f"{p}: cannot read price table ({e.strerror})") from None
        except ValueError as e:
            raise InputError(f"{p}:{getattr(e, 'lineno', 1)}: price table is not valid JSON") from None
        if not isinstance(data, dict):
            raise InputError(f"{p}:1: price table must be a JSON object of model: [input, output]")
        for name, pair in data.items():
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, (int, float)) for x in pair)):
                raise InputError(f"{p}:1: price of {name!r} must be [input, output] USD per million tokens")
            table[name] = (float(pair[0]), float(pair[1]))
    if price is not None:
        try:
            a, b = (float(x) for x in price.split(","))
        except ValueError:
            raise InputError(f"--price {price!r}: expected IN,OUT in USD per million tokens, for example 2.5,10") from None
        table[model or ""] = (a, b)
    return table


def price_of(model: str, table: dict) -> tuple[float, float] | None:
    """Exact name first, then the longest known prefix (gpt-4o-2024-08-06 is priced as gpt-4o)."""
    if model in table:
        return table[model]
    prefixes = [k for k in table if k and model.startswith(k)]
    return table[max(prefixes, key=len)] if prefixes else None


@dataclass
class JudgeStats:
    """What a run spent; filled by whichever backend runs, printed in the summary and _meta."""

    requests: int = 0  # replies paid for in this run
    cache_hits: int = 0
    reasks: int = 0  # unparseable replies asked once more
    logprob_fallbacks: int = 0
    retries: int = 0
    usage: Usage = field(default_factory=Usage)
    reasons: dict = field(default_factory=dict)  # skip reasons

    def cost(self, model: str, table: dict, *, batch: bool = False) -> float | None:
        p = price_of(model, table)
        if p is None:
            return None
        usd = (self.usage.prompt_tokens * p[0] + self.usage.completion_tokens * p[1]) / 1e6
        return usd * (BATCH_DISCOUNT if batch else 1.0)

    def to_dict(self) -> dict:
        return {"requests": self.requests, "cache_hits": self.cache_hits, "reasks": self.reasks, "retries": self.retries,
                "logprob_fallbacks": self.logprob_fallbacks, **self.usage.to_dict(), "skip_reasons": self.reasons}
