"""eval: predictions for benchmark items (from a model, or read from a file), scored per item.

``run`` generates through any backend (the in-process HF model or an OpenAI-compatible
server); ``score_predictions`` scores an existing answer file without importing torch.
Either way each item comes out with ``prediction`` and ``scores``; ``summarize`` re-scores
the predictions it is given, so a resumed run's older lines are scored by today's rules.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from stmed import __version__
from stmed.errors import InputError, did_you_mean
from stmed.evaluation.metrics import aggregate, per_item, score_item
from stmed.options import MAX_PIXELS_HELP, opt
from stmed.records import Outcome, Record, read_records
from stmed.stages.runner import Files, run_stage

PROMPT_VERSIONS = {"free": "1", "short": "1"}


@dataclass
class EvalConfig:
    prompt: str = opt("free", "free (the question as is, as the papers) | short (ask for a word or phrase).")
    # LLaVA-Med's model_vqa_med generates up to 1024 tokens, greedily
    max_new_tokens: int = opt(1024, "Per answer (LLaVA-Med: 1024).")
    chunk_size: int | None = None  # items per unit of work; default: four full batches
    image_root: Path | None = opt(None, "Folder that relative image paths resolve against.", metavar="DIR")
    # LLaVA-Med trained on padded images but evaluated unpadded
    pad_square: bool = opt(False, "Pad images square with the mean colour (LLaVA's pad).")
    max_pixels: int | None = opt(None, MAX_PIXELS_HELP, min=784)
    bootstrap: int = opt(1000, "Bootstrap resamples for 95% CIs (0: none).", min=0)
    seed: int = opt(0, "Seed of the bootstrap resamples.")

    def __post_init__(self):
        if self.prompt not in PROMPT_VERSIONS:
            raise InputError(f"--prompt {self.prompt!r}: choose free or short{did_you_mean(self.prompt, PROMPT_VERSIONS)}")
        if self.max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")

    def text(self, question: str) -> str:
        if self.prompt == "short":
            from stmed.prompts import SHORT_SUFFIX

            return f"{question}\n{SHORT_SUFFIX.text}"
        return question

    def prompt_record(self) -> dict:
        return {"name": self.prompt, "version": PROMPT_VERSIONS[self.prompt]}

    def sampling(self):
        from stmed.core.generate import SamplingParams

        return SamplingParams(self.max_new_tokens, temperature=0.0)  # zero-shot evaluation is greedy


def scored(item: Record, prediction: str, **extra) -> Record:
    return item.derive(prediction=prediction, scores=score_item(prediction, item["answer"], item["answer_type"]), **extra)


def run(cfg: EvalConfig, backend, items: list[Record]) -> Iterator[Outcome]:
    """One Outcome per item: the item with its greedy prediction and scores, in input order.

    Generation is the answer stage's, with one greedy answer per question: batching, images,
    per-record failures and the errors file behave exactly as in ``stmed answer``."""
    from stmed.prompts import Prompt
    from stmed.stages import answers

    template = Prompt(f"eval-{cfg.prompt}", cfg.text("{question}"), PROMPT_VERSIONS[cfg.prompt])
    acfg = answers.AnswersConfig(greedy=True, max_new_tokens=cfg.max_new_tokens, chunk_size=cfg.chunk_size,
                                 image_root=cfg.image_root, pad_square=cfg.pad_square, max_pixels=cfg.max_pixels,
                                 template=template)
    meta = {**backend.describe(), **cfg.sampling().record(), "prompt": cfg.prompt_record(), "stmed": __version__}
    for o in answers.run(acfg, backend, items):
        if o.kind != "done":
            yield o
            continue
        rec = o.record
        item = Record.at({k: v for k, v in rec.items() if k not in ("answers", "answer_gen", "answer_prompt")},
                         rec.where, rec.base_dir)
        yield Outcome.done(scored(item, rec["answers"][0]["text"], gen=meta), tokens=o.tokens)


# ---------------------------------------------------------------- scoring an answer file


def _prediction_text(rec: Record):
    for key in ("prediction", "text"):
        if key in rec:
            return rec[key]
    answers = rec.get("answers")
    if isinstance(answers, list) and answers and isinstance(answers[0], dict):
        return answers[0].get("text")  # an `stmed answer` file: its first answer
    raise InputError(f"{rec.where}: no prediction: expected 'prediction' (stmed) or 'text' (LLaVA-Med)")


def _id_list(ids: Iterable[str], limit: int = 10) -> str:
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def read_predictions(path: str | Path, items: list[Record], all_ids: set[str] | None = None) -> dict[str, str]:
    """id -> prediction text from stmed items or LLaVA-Med answers, matched by id.

    A file that repeats an id, names an id the benchmark lacks, or misses one of ``items``
    is an InputError that lists the ids, so a shuffled or truncated file cannot be scored.
    """
    records = read_records(path, assign_ids=False, unique_ids=False)
    preds: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for rec in records:
        key = rec.get("id", rec.get("question_id"))
        if key is None:
            raise InputError(f"{rec.where}: no 'id' or 'question_id' to match the prediction to a question")
        text = _prediction_text(rec)
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise InputError(f"{rec.where}: the prediction must be a string, got {type(text).__name__}")
        key = str(key)
        counts[key] += 1
        preds[key] = text
    name = "<stdin>" if str(path) == "-" else str(path)
    repeated = [k for k, n in counts.items() if n > 1]
    if repeated:
        raise InputError(f"{name}: {len(repeated)} question id(s) appear more than once: {_id_list(repeated)}")
    known = all_ids if all_ids is not None else {it["id"] for it in items}
    unknown = [k for k in preds if k not in known]
    if unknown:
        raise InputError(f"{name}: {len(unknown)} prediction id(s) are not in the benchmark: {_id_list(unknown)}")
    missing = [it["id"] for it in items if it["id"] not in preds]
    if missing:
        raise InputError(f"{name}: {len(missing)} benchmark item(s) have no prediction: {_id_list(missing)}")
    return preds


def score_predictions(items: list[Record], preds: dict[str, str]) -> Iterator[Outcome]:
    for item in items:
        yield Outcome.done(scored(item, preds[item["id"]]))


# ---------------------------------------------------------------- a run, end to end


def evaluate(cfg: EvalConfig, data, items: list[Record], files: Files, *, engine: Callable | None = None,
             predictions: str | None = None, name: str | None = None, judge=None) -> tuple[int, dict | None]:
    """Predictions for ``items`` (generated by the engine ``engine()`` opens, once the images are
    ready, or read from ``predictions``), scored, open ones also by ``judge`` (an OpenJudge) when given,
    written to ``files`` through the stage runner; returns (exit code, the summary), the summary
    from the main process only. Under a launcher each process takes its share of the items."""
    from stmed.distributed import share, world

    mine = share(items)
    if predictions is not None:
        preds = read_predictions(predictions, items, {it["id"] for it in data.items})
        work, files = (lambda todo: score_predictions(todo, preds)), replace(files, overwrite=True)  # instant: redo
        run_info = {"mode": "predictions", "predictions": predictions, "model": Path(predictions).stem}
    else:
        data.materialize(mine)  # parquet images: written for the items this process generates for
        engine = engine()
        work = lambda todo: run(cfg, engine, todo)  # noqa: E731
        run_info = {"mode": "generate", **engine.describe(), **cfg.sampling().record(), "pad_square": cfg.pad_square,
                    "max_pixels": cfg.max_pixels}
    if judge is not None:
        scoring, work = work, lambda todo: _judged(scoring(todo), judge)
    kept: list[dict] = []
    result = run_stage("eval", lambda todo: _keep(work(todo), kept), mine, files,
                       figures=judge.figures if judge is not None else None)
    if not result.main:
        return result.code, None  # the main process merged every share and scores the whole output
    resumed = (predictions is None or world().active) and files.output not in (None, "-")
    if resumed:
        kept = read_output(Path(files.output), {it["id"] for it in items})  # earlier runs' lines count too
    judged = None
    if judge is not None:
        from stmed.evaluation import open_judge
        from stmed.stages.runner import sum_figures

        before = judge.figures()
        # earlier runs' open lines without this judge's score are judged now (the cache makes repeats free)
        kept = judge.grade(kept) if resumed else kept
        judged = open_judge.summary(judge.cfg, _plus(sum_figures(result.infos), judge.figures(), before), judge.prices)
    summary = summarize(kept, data, name=name or Path(str(run_info.get("model", "run"))).name, run_info=run_info,
                        cfg=cfg, selected=len(items), failed=len(items) - len(kept), rescore=resumed,
                        judge=judged)
    return result.code, summary


def _judged(outcomes: Iterable[Outcome], judge, chunk: int | None = None) -> Iterator[Outcome]:
    """The outcomes with their open items judged, a chunk at a time so requests run concurrently."""
    chunk = chunk or judge.chunk
    pending: list[Outcome] = []

    def flush() -> Iterator[Outcome]:
        graded = iter(judge.grade([o.record for o in pending]))
        for o in pending:
            yield Outcome.done(next(graded), tokens=o.tokens)
        pending.clear()

    for o in outcomes:
        if o.kind != "done":
            yield o
            continue
        pending.append(o)
        if len(pending) >= chunk:
            yield from flush()
    if pending:
        yield from flush()


def _plus(total: dict, after: dict, before: dict) -> dict:
    """``total`` plus what the main process spent between ``before`` and ``after`` (nested counts too)."""
    out = dict(total)
    for k, v in after.items():
        if isinstance(v, dict):
            out[k] = _plus(out.get(k, {}), v, before.get(k, {}))
        else:
            out[k] = out.get(k, 0) + v - before.get(k, 0)
    return out


def _keep(outcomes: Iterable[Outcome], kept: list) -> Iterator[Outcome]:
    for o in outcomes:
        if o.kind == "done":
            kept.extend(o.records)
        yield o


# ---------------------------------------------------------------- summary


def summarize(items: list[dict], data, *, name: str, run_info: dict, cfg: EvalConfig, selected: int,
              failed: int = 0, rescore: bool = True, judge: dict | None = None) -> dict:
    """The summary JSON: metrics with CIs and rules, counts, what data and what model made it.

    ``selected`` is how many items this run was asked for (all of the split, or --limit N).
    ``rescore`` scores the predictions again: lines kept from an earlier, resumed run may have
    been scored by an older stmed. A judge's score is never recomputed here: it is kept from the
    line when ``judge`` (the run's open-judge block) made it, and dropped otherwise.
    """
    from stmed.evaluation.open_judge import kept_score

    if rescore:
        items = [{**it, "scores": {**score_item(it.get("prediction") or "", it["answer"], it["answer_type"]),
                                   **kept_score(it, judge)}} for it in items]
    result = aggregate(items, resamples=cfg.bootstrap, seed=cfg.seed)
    return {
        "name": name,
        "stmed_version": __version__,
        "benchmark": data.describe(),
        "run": {**run_info, "prompt": cfg.prompt_record()},
        "complete": len(items) == selected and selected == data.counts()["total"] and not failed,
        "selected": selected,
        "failed": failed,
        **result,
        **({"open_judge": judge} if judge is not None else {}),
        "per_item": per_item(items),  # last: long, and only `stmed report`'s paired tests read it
    }


def read_output(path: Path, ids: set[str]) -> list[dict]:
    """The scored items of a (possibly resumed) output file that belong to this run's items."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if str(rec.get("id")) in ids and "prediction" in rec:
                    out.append(rec)
    return out
