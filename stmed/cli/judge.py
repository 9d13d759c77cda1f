"""judge: sampled answers in, preference pairs out (GPT-4o, any OpenAI-compatible server,
the OpenAI Batch API, or a local VLM)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app
from stmed.core.model import ModelSpec
from stmed.options import options
from stmed.judge.config import JudgeConfig
from stmed.stages.runner import Files

Opt = typer.Option


@app.command("judge")
@c.command
@options(JudgeConfig, ModelSpec, Files)
def judge(
    cfg: JudgeConfig, spec: ModelSpec, files: Files,
    input: Annotated[str, typer.Argument(metavar="INPUT", help="Answer records (>= 2 answers each) as JSONL, or - for stdin.")] = "-",
    cache: Annotated[Optional[Path], Opt(metavar="FILE", help="SQLite reply cache (default judge-cache.sqlite in $STMED_CACHE_DIR, else ~/.cache/stmed).")] = None,
    no_cache: Annotated[bool, Opt("--no-cache", help="Neither read nor write the reply cache.")] = False,
    prices: Annotated[Optional[Path], Opt(metavar="FILE", help="JSON price table {model: [input, output]} in USD per million tokens.")] = None,
    price: Annotated[Optional[str], Opt(help="IN,OUT USD per million tokens for --judge-model.")] = None,
    export: Annotated[Optional[str], Opt(help="stllava: also write OUTPUT.stllava.json (STLLaVA-Med DPO format).")] = None,
    skipped: Annotated[Optional[str], Opt(metavar="FILE", help="Skipped records (tie, order-inconsistent, below-margin) go here (default OUTPUT.skipped.jsonl).")] = None,
    limit: c.Limit = None, shard: c.Shard = None,
) -> int:
    """Judge each record's answers and write (chosen, rejected) preference pairs.

    With --hard-negative corrupt the rejected side is the answer on the corrupted image
    (stmed answer --corrupt), confirmed by the judge unless --no-confirm."""
    from stmed.judge.cost import load_prices
    from stmed.stages.judge import judge as run_judge

    if export not in (None, "stllava"):
        c.fail(f"--export {export!r}: expected stllava")
    if (cfg.prepare_only or cfg.collect) and cfg.backend != "batch":
        c.fail("--prepare-only and --collect need --backend batch")
    cfg.local = spec
    table = load_prices(prices, price, cfg.judge_model)
    local = cfg.local_model
    if cfg.asks and not local and not cfg.collect and not cfg.prepare_only:
        from stmed.api.openai_client import api_key_from_env

        api_key_from_env(cfg.api_key_env, cfg.base_url)  # a missing key stops here, before any file is opened
    records = c.select(c.open_input(input, nonempty=True), shard=shard, limit=limit)
    if cfg.collect:
        from stmed.judge.batch import read_outputs

        cfg.collected = read_outputs(cfg.collect)  # a malformed output file stops here, before any output
    return run_judge(cfg, records, replace(files, skipped=skipped), prices=table, export=export,
                     cache=None if no_cache or local or not cfg.asks else (cache or "default"))
