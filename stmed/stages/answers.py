"""answer: ``n`` sampled answers to each question, each with its own recorded seed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from stmed import __version__
from stmed.core.generate import GenRequest, SamplingParams
from stmed.errors import InputError, RecordError
from stmed.images import record_image
from stmed.options import MAX_PIXELS_HELP, ints, opt
from stmed.prompts import Prompt, file_option
from stmed.records import Outcome, Record, require
from stmed.corrupt import ANSWERS, FIELD, Corruption
from stmed.stages.common import chunk_size, chunks, seed_for


@dataclass
class AnswersConfig:
    # STLLaVA-Med's answer sampling: 2 answers per question with seeds 40 and 42, T=1.2,
    # top_k=100, top_p=0.95, up to 1024 tokens.
    n: int = opt(2, "Answers per question (paper: 2).", flags="-n")
    seeds: tuple[int, ...] = opt((40, 42), "One seed per answer (paper: 40,42).", type=str, parse=ints("--seeds"),
                                 flag_default="40,42")
    greedy: bool = opt(False, "One deterministic answer instead of samples.")
    temperature: float = opt(1.2, "Sampling temperature (paper: 1.2).")
    top_k: int = opt(100, "Top-k sampling (paper: 100).")
    top_p: float = opt(0.95, "Nucleus sampling (paper: 0.95).")
    max_new_tokens: int = opt(1024, "Per answer (paper: 1024).")
    chunk_size: int | None = None  # questions per unit of work; default: four full batches of samples
    image_root: Path | None = opt(None, "Folder that relative image paths resolve against.", metavar="DIR")
    pad_square: bool = opt(False, "Pad images square with the mean colour (LLaVA's pad).")
    max_pixels: int | None = opt(None, MAX_PIXELS_HELP, min=784)
    system_prompt: Prompt | None = opt(None, "File with a system prompt.", type=Optional[Path],
                                       parse=file_option("system", builtin=False))
    template: Prompt | None = opt(None, "File with a prompt template containing {question}.", type=Optional[Path],
                                  parse=file_option("template", builtin=False))  # default: the question as is
    # hard negatives: the same question answered on a corrupted copy of the image (stmed.corrupt)
    corrupt: Corruption | None = opt(None, "Also answer on a corrupted copy of the image: noise|blur|mask|crop[:STRENGTH] "
                                     "(recorded as 'corrupt' and 'corrupt_answers').", type=Optional[str],
                                     parse=lambda s: Corruption.parse(s) if s else None)
    corrupt_seed: int = opt(0, "Base seed of the corruptions (each record's own comes from it and the record id).")
    corrupt_n: int = opt(1, "Answers per question on the corrupted image (seeds: the first of --seeds).", min=1)
    sample_seeds: list[int | None] = field(init=False)

    def __post_init__(self):
        if self.template is not None and "{question}" not in self.template.text:  # --greedy too
            raise InputError("the answer template file must contain {question}")
        if self.greedy:
            self.n, self.sample_seeds, self.corrupt_n = 1, [None], 1
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
        if self.corrupt_n > self.n:
            raise InputError(f"--corrupt-n {self.corrupt_n}: at most -n ({self.n}), as it takes its seeds from --seeds")

    def corruption(self, rec: Record) -> Corruption | None:
        """This record's corruption: its seed from the record's id, so batches, shards and resumes agree."""
        if self.corrupt is None:
            return None
        return self.corrupt.with_seed(seed_for(self.corrupt_seed, str(rec.get("id") or rec.get("image")), 0))

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
    processor = backend.processor
    if processor is None:
        return {}
    from stmed.core.prompt import prompt_hash, render, rendering

    how = rendering(processor)  # a string-content template: the image token written before the text
    return {"rendered_sha256": prompt_hash(render(processor, messages, with_image=True)),
            **({"rendering": how} if how else {})}


def run(cfg: AnswersConfig, backend, records: list[Record]) -> Iterator[Outcome]:
    """One Outcome per question record: the record with ``answers`` added, in input order."""
    meta = {**backend.describe(), **cfg.sampling().record(), "stmed": __version__,
            "prompts": {p.name: p.version for p in (cfg.system_prompt, cfg.template) if p is not None}}
    rows = len(cfg.sample_seeds) + (cfg.corrupt_n if cfg.corrupt else 0)
    size = chunk_size(cfg.chunk_size, backend, rows)
    for chunk in chunks(records, size):
        ready: list[tuple[Record, GenRequest, GenRequest | None, Corruption | None]] = []
        for rec in chunk:
            try:
                require(rec, "question", types={"question": str})
                messages, corrupt = cfg.messages(rec["question"]), cfg.corruption(rec)
                image = record_image(rec, cfg.image_root, cfg.pad_square, cfg.max_pixels)
                bad = None if corrupt is None else GenRequest(  # the same prompt and seeds, only the pixels differ
                    messages, record_image(rec, cfg.image_root, cfg.pad_square, cfg.max_pixels, corrupt),
                    seeds=cfg.sample_seeds[: cfg.corrupt_n])
                ready.append((rec, GenRequest(messages, image, seeds=cfg.sample_seeds), bad, corrupt))
            except RecordError as e:
                yield Outcome.failed(rec, str(e))
        requests = [r for rec, req, bad, _ in ready for r in (req, bad) if r is not None]
        outputs = dict(backend.generate(requests, cfg.sampling()))
        j = 0
        for rec, req, bad, corrupt in ready:
            out, bad_out = outputs[j], outputs[j + 1] if bad is not None else None
            j += 1 + (bad is not None)
            failure = next((o for o in (out, bad_out) if isinstance(o, Exception)), None)
            if failure is not None:  # failed after its retries (remote) or in the model (this input)
                yield Outcome.failed(rec, str(failure))
                continue
            fields = {"answers": _answers(out, req.seeds)}
            if bad is not None:
                fields.update({FIELD: corrupt.record(), ANSWERS: _answers(bad_out, bad.seeds)})
            yield Outcome.done(rec.derive(**fields, answer_gen=meta, answer_prompt={
                **cfg.prompt_record(req.messages), **rendered_hash(backend, req.messages)}),
                tokens=out.total_tokens + (bad_out.total_tokens if bad_out is not None else 0))


def _answers(out, seeds: list) -> list[dict]:
    answers = [{"text": t, "seed": s} for t, s in zip(out.texts, seeds)]
    for a, ids in zip(answers, out.ids or ()):  # a local engine's emitted ids: what dpo trains on
        a["ids"] = ids
    return answers
