"""gen-questions and answer: the policy writes its own training data."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from stmed.cli import common as c
from stmed.cli.app import app
from stmed.core.model import ModelSpec
from stmed.options import options
from stmed.engines import EngineOptions
from stmed.stages import answers, questions
from stmed.stages.answers import AnswersConfig
from stmed.stages.questions import QuestionsConfig
from stmed.stages.runner import Files


@app.command("gen-questions")
@c.command
@options(QuestionsConfig, ModelSpec, EngineOptions, Files)
def gen_questions(
    input: Annotated[str, typer.Argument(help="JSONL of {id, image}, a folder of images, or - for stdin.")],
    model: c.Model, cfg: QuestionsConfig, spec: ModelSpec, engine_opts: EngineOptions, files: Files,
    limit: c.Limit = None, shard: c.Shard = None,
) -> int:
    """Describe each image, then ask N questions about it as the model's own virtual user."""
    from stmed.engines import open_engine

    questions.check(cfg, engine_opts.engine)
    records = c.select(c.open_input(input, folder_ok=True, nonempty=True), shard=shard, limit=limit)
    backend = open_engine(engine_opts, replace(spec, model=model))
    return c.run("gen-questions", questions, cfg, backend, records, files, unit="images",
                 pending=lambda recs, done: questions.pending(cfg, recs, done))


@app.command("answer")
@c.command
@options(AnswersConfig, ModelSpec, EngineOptions, Files)
def answer(input: c.Input, model: c.Model, cfg: AnswersConfig, spec: ModelSpec, engine_opts: EngineOptions, files: Files,
           limit: c.Limit = None, shard: c.Shard = None) -> int:
    """Sample N answers to each question, each with its own recorded seed."""
    from stmed.engines import open_engine

    records = c.select(c.open_input(input, nonempty=True), shard=shard, limit=limit)
    backend = open_engine(engine_opts, replace(spec, model=model))
    return c.run("answer", answers, cfg, backend, records, files)
