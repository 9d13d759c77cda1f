"""judge: sampled answers in, preference pairs out (GPT-4o, any OpenAI-compatible server,
the OpenAI Batch API, or a local VLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app

Opt = typer.Option


@app.command("judge")
@c.command
def judge(
    input: Annotated[str, typer.Argument(help="Answer records (>= 2 answers each) as JSONL, or - for stdin.")] = "-",
    backend: Annotated[str, Opt(help="openai (any OpenAI-compatible server) | batch (OpenAI Batch API) | local (a VLM here).")] = "openai",
    judge_model: Annotated[str, Opt("--judge-model", help="Served model name, or for local a HF id or folder (paper: gpt-4o).")] = "gpt-4o",
    base_url: c.BaseUrl = None, api_key_env: c.ApiKeyEnv = "OPENAI_API_KEY", concurrency: c.Concurrency = 16,
    policy: Annotated[str, Opt(help="swap: judge both orders, keep agreeing pairs | paper: the original single-order rule.")] = "swap",
    min_margin: Annotated[float, Opt(help="swap: averaged score gap (1-10 scale) a pair needs.")] = 1.0,
    temperature: Annotated[float, Opt(help="Judge temperature (paper: 0.2).")] = 0.2,
    max_tokens: Annotated[int, Opt(help="Judge reply length limit.")] = 300,
    json_mode: Annotated[str, Opt("--json", help="Ask for JSON via response_format: auto (api.openai.com only) | on | off.")] = "auto",
    prompt_file: Annotated[Optional[Path], Opt(help="Template replacing the judge prompt ({question}, {answer_1}, {answer_2}).")] = None,
    max_side: Annotated[int, Opt(help="Longest image side sent to the judge, in pixels.")] = 1024,
    cache: Annotated[Optional[Path], Opt(help="SQLite reply cache (default ~/.cache/stmed/judge-cache.sqlite).")] = None,
    no_cache: Annotated[bool, Opt("--no-cache", help="Neither read nor write the reply cache.")] = False,
    timeout: Annotated[float, Opt(help="Seconds for one HTTP attempt.")] = 120.0,
    max_request_time: Annotated[float, Opt(help="Seconds for all retries of one request.")] = 600.0,
    prices: Annotated[Optional[Path], Opt(help="JSON price table {model: [input, output]} in USD per million tokens.")] = None,
    price: Annotated[Optional[str], Opt(help="IN,OUT USD per million tokens for --judge-model.")] = None,
    export: Annotated[Optional[str], Opt(help="stllava: also write OUTPUT.stllava.json (STLLaVA-Med DPO format).")] = None,
    batch_dir: Annotated[Optional[Path], Opt(help="batch: folder for request/output files (default OUTPUT.batch/).")] = None,
    prepare_only: Annotated[bool, Opt("--prepare-only", help="batch: write request files and stop (for vllm run-batch).")] = False,
    collect: Annotated[Optional[list[Path]], Opt(help="batch: build pairs from this Batch output file (repeatable).")] = None,
    poll_interval: Annotated[float, Opt(help="batch: seconds between status polls.")] = 30.0,
    adapter: c.Adapter = None, device: c.Device = "auto", dtype: c.DType = "auto", batch_size: c.BatchSize = 8,
    trust_remote_code: c.TrustRemote = False, chat_template: c.ChatTemplate = None, max_pixels: c.MaxPixels = None,
    skipped: Annotated[Optional[str], Opt(help="Skipped records (tie, order-inconsistent, below-margin) go here (default OUTPUT.skipped.jsonl).")] = None,
    image_root: c.ImageRoot = None, limit: c.Limit = None, shard: c.Shard = None, output: c.Output = None,
    errors: c.Errors = None, overwrite: c.Overwrite = False, quiet: c.Quiet = False,
) -> int:
    """Judge each record's answers and write (chosen, rejected) preference pairs."""
    from stmed.judge.cost import load_prices
    from stmed.judge.run import JudgeConfig
    from stmed.judge.session import judge_session

    if export not in (None, "stllava"):
        c.fail(f"--export {export!r}: expected stllava")
    if (prepare_only or collect) and backend != "batch":
        c.fail("--prepare-only and --collect need --backend batch")
    cfg = JudgeConfig(
        backend=backend, judge_model=judge_model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
        policy=policy, min_margin=min_margin, temperature=temperature, max_tokens=max_tokens, max_side=max_side,
        json_mode=json_mode, prompt_file=str(prompt_file) if prompt_file else None, image_root=image_root,
        timeout=timeout, max_request_seconds=max_request_time, device=device, dtype=dtype, batch_size=batch_size,
        adapter=adapter, trust_remote_code=trust_remote_code, chat_template=chat_template, max_pixels=max_pixels,
        batch_dir=batch_dir, prepare_only=prepare_only,
        collect=[str(p) for p in collect or []], poll_interval=poll_interval,
    )
    table = load_prices(prices, price, judge_model)
    if backend != "local" and not collect and not prepare_only:
        from stmed.backends.openai_client import api_key_from_env

        api_key_from_env(api_key_env, base_url)  # a missing key stops here, before any file is opened
    records = c.open_input(input)
    if not records:  # as gen-questions and answer: nothing to judge is a mistake, not a finished run
        c.fail(f"{'<stdin>' if input == '-' else input}: no records (empty input)")
    records = c.select(records, shard=shard, limit=limit)
    return judge_session(cfg, records, output=output, skipped=skipped, errors=errors, overwrite=overwrite, quiet=quiet,
                         cache=None if no_cache or backend == "local" else (cache or "default"), prices=table,
                         export=export)
