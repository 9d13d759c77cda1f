"""inspect: one image in the terminal: its facts, the model's description, questions it asks
itself (the same vuser path as gen-questions) and its answers, plus the user's own questions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stmed.errors import RecordError
from stmed.options import like, opt
from stmed.records import Record
from stmed.stages import answers, questions


@dataclass
class InspectConfig:
    question: list[str] = opt(help="Ask this (repeatable).", flags="--question", factory=list, metavar="TEXT")
    n_questions: int = opt(3, "Questions the model asks itself.", flags="-n", min=0)  # a quick look, not the paper's 5
    max_new_tokens: int = opt(128, "Per answer and question (the description gets twice as many).", min=1)
    seed: int = opt(0, "Seed of the self-asked questions.")
    max_pixels: int | None = like(questions.QuestionsConfig, "max_pixels")
    engine: str = opt("hf", "hf (transformers) | vllm: the engine the model runs on.")


def inspect_image(backend, path: Path, info, cfg: InspectConfig) -> dict:
    """``info``: the ImageInfo from opening ``path`` (done before the model loads, so a bad image
    is an input error that costs no model time)."""
    asked, n_questions, seed = cfg.question, cfg.n_questions, cfg.seed
    max_new_tokens, max_pixels = cfg.max_new_tokens, cfg.max_pixels
    rec = Record.at({"id": path.name, "image": str(path.resolve())}, str(path), path.resolve().parent)
    qcfg = questions.QuestionsConfig(n=n_questions, seed=seed, max_new_tokens=max_new_tokens,
                                     describe_max_new_tokens=max_new_tokens * 2, max_pixels=max_pixels)
    qs = _records(questions.run(qcfg, backend, [rec]), path) if n_questions else []
    description = qs[0]["description"] if qs else _describe(backend, rec, max_new_tokens * 2, max_pixels)
    items = [rec.derive(id=f"ask{k}", question=q) for k, q in enumerate(asked)]
    items += [rec.derive(id=q["id"], question=q["question"], self_asked=True) for q in qs]
    acfg = answers.AnswersConfig(greedy=True, max_new_tokens=max_new_tokens, max_pixels=max_pixels)
    answered = _records(answers.run(acfg, backend, items), path)
    return {
        "image": str(path), "facts": info.to_dict(), "model": backend.describe(), "description": description,
        "qa": [{"question": a["question"], "answer": a["answers"][0]["text"], "self_asked": bool(a.get("self_asked"))}
               for a in answered],
    }


def _records(outcomes, path: Path) -> list[Record]:
    """Every record the stage made; a failure is this one image's error."""
    out = []
    for o in outcomes:
        if o.kind == "failed":
            raise RecordError(f"{path}: the model could not process this image")
        out.extend(o.records)
    return out


def _describe(backend, rec: Record, max_new_tokens: int, max_pixels: int | None) -> str:
    from stmed.core.generate import GenRequest, SamplingParams
    from stmed.prompts import DESCRIBE
    from stmed.images import record_image

    req = GenRequest([{"role": "user", "content": DESCRIBE.text}], record_image(rec, max_pixels=max_pixels))
    return next(iter(backend.generate([req], SamplingParams(max_new_tokens))))[1].texts[0]
