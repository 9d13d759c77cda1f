"""answer: ``n`` sampled answers to each question, each with its own recorded seed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stmed import __version__
from stmed.core.generate import GenRequest, SamplingParams
from stmed.errors import InputError, RecordError
from stmed.prompts import Prompt
from stmed.records import ErrorSink, Record, require
from stmed.stages.common import chunk_size, chunks, record_image


@dataclass
class AnswersConfig:
    n: int = 2  # paper: 2 sampled answers per question
    seeds: tuple[int, ...] = (40, 42)  # paper: seeds 40 and 42
    greedy: bool = False  # one deterministic answer instead
    temperature: float = 1.2  # paper's answer sampling: T=1.2, top_k=100, top_p=0.95, <=1024 tokens
    top_k: int = 100
    top_p: float = 0.95
    max_new_tokens: int = 1024
    chunk_size: int | None = None  # questions per unit of work; default: four full batches of samples
    image_root: Path | None = None
    pad_square: bool = False
    max_pixels: int | None = None  # images downscaled to at most this many pixels (dynamic-resolution models)
    system_prompt: Prompt | None = None
    template: Prompt | None = None  # text with {question}; default: the question as is
    sample_seeds: list[int | None] = field(init=False)

    def __post_init__(self):
        if self.template is not None and "{question}" not in self.template.text:  # --greedy too
            raise InputError("the answer template file must contain {question}")
        if self.greedy:
            self.n, self.sample_seeds = 1, [None]
            return
        if self.n < 1:
            raise InputError("-n must be at least 1")
        seeds = list(self.seeds)
        if len(seeds) > self.n:
            seeds = seeds[: self.n]
        while len(seeds) < self.n:  # more samples than seeds: continue after the largest
            seeds.append(max(seeds, default=-1) + 1)
        if len(set(seeds)) != len(seeds):
            raise InputError(f"--seeds {','.join(map(str, self.seeds))}: seeds must differ, or answers repeat")
        self.sample_seeds = seeds

    def sampling(self) -> SamplingParams:
        if self.greedy:
            return SamplingParams(self.max_new_tokens)
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_k, self.top_p)

    def prompt_record(self, messages: list[dict]) -> dict:
        """What ``dpo`` and ``sft`` must train on: the exact messages (system prompt and template
        applied), the prompts' names and versions, and the image settings."""
        return {"messages": messages, "prompts": {p.name: p.version for p in (self.system_prompt, self.template)
                                                  if p is not None},
                "pad_square": self.pad_square, "max_pixels": self.max_pixels}

    def messages(self, question: str) -> list[dict]:
        text = self.template.text.replace("{question}", question) if self.template else question
        msgs = [{"role": "user", "content": text}]
        if self.system_prompt is not None:
            msgs.insert(0, {"role": "system", "content": self.system_prompt.text})
        return msgs


def rendered_hash(backend, messages: list[dict]) -> dict:
    """The hash of the prompt text this model's chat template renders for ``messages`` (a local
    model only: a served one renders its own): dpo refuses to train the answers under another."""
    processor = getattr(backend, "processor", None)
    if processor is None:
        return {}
    from stmed.core.chat import prompt_hash, render

    return {"rendered_sha256": prompt_hash(render(processor, messages, with_image=True))}


def run(cfg: AnswersConfig, backend, records: list[Record], errors: ErrorSink,
        done: set[str] = frozenset(), tracker=None) -> Iterator[Record]:
    """Each question record with ``answers`` added, in input order."""
    meta = {**backend.describe(), **cfg.sampling().record(), "stmed": __version__,
            "prompts": {p.name: p.version for p in (cfg.system_prompt, cfg.template) if p is not None}}
    size = chunk_size(cfg.chunk_size, backend, len(cfg.sample_seeds))
    for chunk in chunks((r for r in records if r["id"] not in done), size):
        ready: list[tuple[Record, GenRequest]] = []
        for rec in chunk:
            try:
                require(rec, "question", types={"question": str})
                ready.append((rec, GenRequest(cfg.messages(rec["question"]),
                                              record_image(rec, cfg.image_root, cfg.pad_square, cfg.max_pixels),
                                              seeds=cfg.sample_seeds)))
            except RecordError as e:
                errors.add(rec, str(e))
                if tracker:
                    tracker.advance(kind="failed")
        outputs = dict(backend.generate([req for _, req in ready], cfg.sampling()))
        for j, (rec, req) in enumerate(ready):
            out = outputs[j]
            if isinstance(out, Exception):  # failed after its retries (remote) or in the model (this input)
                errors.add(rec, f"{rec.where}: {out}")
                if tracker:
                    tracker.advance(kind="failed")
                continue
            answers = [{"text": t, "seed": s} for t, s in zip(out.texts, req.seeds)]
            if tracker:
                tracker.advance(tokens=out.total_tokens)
            yield rec.derive(answers=answers, answer_gen=meta,
                             answer_prompt={**cfg.prompt_record(req.messages), **rendered_hash(backend, req.messages)})
