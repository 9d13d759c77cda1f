"""gen-questions and answer: the policy writes its own training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app

PromptFile = Optional[Path]


def _nonempty(records: list, source: str) -> list:
    """An input without a single record is a mistake (a truncated file, an upstream stage that
    wrote nothing): say so, rather than finish "complete" with an empty output."""
    if not records:
        c.fail(f"{'<stdin>' if source == '-' else source}: no records (empty input)")
    return records


@app.command("gen-questions")
@c.command
def gen_questions(
    input: Annotated[str, typer.Argument(help="JSONL of {id, image}, a folder of images, or - for stdin.")],
    model: c.Model,
    n: Annotated[int, typer.Option("-n", help="Questions per image (paper: 5).")] = 5,
    strategy: Annotated[str, typer.Option(help="vuser (continue in the user's role, the paper's) | instruct.")] = "vuser",
    temperature: float = 1.2, top_k: int = 300, top_p: float = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="Per question (paper: 300).")] = 300,
    describe_max_new_tokens: Annotated[int, typer.Option(help="For the greedy description.")] = 512,
    max_tries: Annotated[int, typer.Option(help="Sampling rounds to replace empty/duplicate questions.")] = 3,
    system_prompt: Annotated[PromptFile, typer.Option(help="File replacing the virtual-user system prompt.")] = None,
    describe_prompt: Annotated[PromptFile, typer.Option(help="File replacing the description prompt.")] = None,
    ask_prompt: Annotated[PromptFile, typer.Option(help="File replacing the instruct strategy's request.")] = None,
    pad_square: Annotated[bool, typer.Option(help="Pad images square with the mean colour (LLaVA's pad).")] = False,
    max_pixels: c.MaxPixels = None, chat_template: c.ChatTemplate = None,
    adapter: c.Adapter = None, device: c.Device = "auto", dtype: c.DType = "auto", batch_size: c.BatchSize = 8,
    seed: c.Seed = 0, trust_remote_code: c.TrustRemote = False, static_cache: c.StaticCache = False,
    backend: c.BackendName = "hf", base_url: c.BaseUrl = None, api_key_env: c.ApiKeyEnv = "OPENAI_API_KEY",
    concurrency: c.Concurrency = 16, image_root: c.ImageRoot = None, limit: c.Limit = None, shard: c.Shard = None,
    output: c.Output = None, errors: c.Errors = None, overwrite: c.Overwrite = False, quiet: c.Quiet = False,
) -> int:
    """Describe each image, then ask N questions about it as the model's own virtual user."""
    from stmed import prompts
    from stmed.stages import questions

    cfg = questions.QuestionsConfig(
        n=n, strategy=strategy, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
        describe_max_new_tokens=describe_max_new_tokens, seed=seed, max_tries=max_tries, image_root=image_root,
        pad_square=pad_square, max_pixels=max_pixels, system_prompt=prompts.get("vuser-system", system_prompt),
        describe_prompt=prompts.get("describe", describe_prompt), ask_prompt=prompts.get("instruct-ask", ask_prompt))
    if backend == "openai" and strategy == "vuser":
        c.fail("--strategy vuser needs raw prompt continuation, which --backend openai cannot do; use --strategy instruct")
    records = c.select(_nonempty(c.open_input(input, folder_ok=True), input), shard=shard, limit=limit)
    engine = c.make_backend(backend, c.ModelFlags(model, adapter, device, dtype, trust_remote_code, chat_template), batch_size=batch_size,
                            base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, static_cache=static_cache)
    return c.run_stage("gen-questions", lambda done, sink, t: questions.run(cfg, engine, records, sink, done, t),
                       output=output, errors=errors, overwrite=overwrite, quiet=quiet, total=len(records), unit="images")


@app.command("answer")
@c.command
def answer(
    input: c.Input,
    model: c.Model,
    n: Annotated[int, typer.Option("-n", help="Answers per question (paper: 2).")] = 2,
    seeds: Annotated[str, typer.Option(help="One seed per answer (paper: 40,42).")] = "40,42",
    greedy: Annotated[bool, typer.Option(help="One deterministic answer instead of samples.")] = False,
    temperature: float = 1.2, top_k: int = 100, top_p: float = 0.95,
    max_new_tokens: Annotated[int, typer.Option(help="Per answer (paper: 1024).")] = 1024,
    system_prompt: Annotated[PromptFile, typer.Option(help="File with a system prompt.")] = None,
    template: Annotated[PromptFile, typer.Option(help="File with a prompt template containing {question}.")] = None,
    pad_square: Annotated[bool, typer.Option(help="Pad images square with the mean colour (LLaVA's pad).")] = False,
    max_pixels: c.MaxPixels = None, chat_template: c.ChatTemplate = None,
    adapter: c.Adapter = None, device: c.Device = "auto", dtype: c.DType = "auto", batch_size: c.BatchSize = 8,
    trust_remote_code: c.TrustRemote = False, static_cache: c.StaticCache = False,
    backend: c.BackendName = "hf", base_url: c.BaseUrl = None, api_key_env: c.ApiKeyEnv = "OPENAI_API_KEY",
    concurrency: c.Concurrency = 16, image_root: c.ImageRoot = None, limit: c.Limit = None, shard: c.Shard = None,
    output: c.Output = None, errors: c.Errors = None, overwrite: c.Overwrite = False, quiet: c.Quiet = False,
) -> int:
    """Sample N answers to each question, each with its own recorded seed."""
    from stmed import prompts
    from stmed.stages import answers

    cfg = answers.AnswersConfig(
        n=n, seeds=tuple(c.parse_ints(seeds, "--seeds")), greedy=greedy, temperature=temperature, top_k=top_k,
        top_p=top_p, max_new_tokens=max_new_tokens, image_root=image_root, pad_square=pad_square, max_pixels=max_pixels,
        system_prompt=prompts.from_file("system", system_prompt) if system_prompt else None,
        template=prompts.from_file("template", template) if template else None)
    records = c.select(_nonempty(c.open_input(input), input), shard=shard, limit=limit)
    engine = c.make_backend(backend, c.ModelFlags(model, adapter, device, dtype, trust_remote_code, chat_template), batch_size=batch_size,
                            base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, static_cache=static_cache)
    return c.run_stage("answer", lambda done, sink, t: answers.run(cfg, engine, records, sink, done, t),
                       output=output, errors=errors, overwrite=overwrite, quiet=quiet, total=len(records))
