"""gen-questions: the policy describes each image, then asks its own questions about it.

STLLaVA-Med's method (``vuser``): turn 1 is a greedy detailed description; then the model
continues *in the user's role* after that description, as a curious virtual user, and samples
``n`` questions. ``instruct`` asks for a question in an ordinary user turn instead (for
backends that cannot continue a raw prompt, such as chat APIs).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from stmed import __version__, prompts, registry
from stmed.core.generate import GenRequest, SamplingParams
from stmed.errors import InputError, RecordError
from stmed.images import list_images, record_image
from stmed.options import MAX_PIXELS_HELP, opt
from stmed.records import Outcome, Record
from stmed.stages.common import chunk_size, chunks, seed_for

STRATEGIES = ("vuser", "instruct")


@dataclass
class QuestionsConfig:
    # STLLaVA-Med's question sampling (its gen-questions script): 5 per image, T=1.2, top_k=300,
    # top_p=0.95, up to 300 tokens, after a greedy description; the model continues as the user.
    n: int = opt(5, "Questions per image (paper: 5).", flags="-n")
    strategy: str = opt("vuser", "vuser (continue in the user's role, the paper's) | instruct.")
    temperature: float = opt(1.2, "Sampling temperature (paper: 1.2).")
    top_k: int = opt(300, "Top-k sampling (paper: 300).")
    top_p: float = opt(0.95, "Nucleus sampling (paper: 0.95).")
    max_new_tokens: int = opt(300, "Per question (paper: 300).")
    describe_max_new_tokens: int = opt(512, "For the greedy description (turn 1).")
    seed: int = opt(0, "Base seed; every sample records its own seed.")
    max_tries: int = opt(3, "Sampling rounds to replace empty/duplicate questions.")
    chunk_size: int | None = None  # images per unit of work; default: four full description batches
    image_root: Path | None = opt(None, "Folder that relative image paths resolve against.", metavar="DIR")
    pad_square: bool = opt(False, "Pad images square with the mean colour (LLaVA's pad).")
    max_pixels: int | None = opt(None, MAX_PIXELS_HELP, min=784)
    system_prompt: prompts.Prompt = opt(help="File replacing the virtual-user system prompt.", factory=lambda: prompts.VUSER_SYSTEM,
                                        type=Optional[Path], parse=prompts.file_option("vuser-system"), flag_default=None)
    describe_prompt: prompts.Prompt = opt(help="File replacing the description prompt.", factory=lambda: prompts.DESCRIBE,
                                          type=Optional[Path], parse=prompts.file_option("describe"), flag_default=None)
    ask_prompt: prompts.Prompt = opt(help="File replacing the instruct strategy's request.", factory=lambda: prompts.INSTRUCT_ASK,
                                     type=Optional[Path], parse=prompts.file_option("instruct-ask"), flag_default=None)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise InputError(f"--strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if self.n < 1 or self.max_tries < 1:
            raise InputError("-n and --max-tries must be at least 1")

    def sampling(self, stop: tuple[str, ...] = ()) -> SamplingParams:
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_k, self.top_p, stop=stop)


def image_records(folder: Path) -> list[Record]:
    """A folder of images as input records, ids from relative paths (stable, sorted)."""
    found = list_images(folder)
    if not found:
        raise InputError(f"{folder}: no image files found (looked for JPEG, PNG, TIFF, BMP, WebP, DICOM)")
    base = folder.resolve()
    return [Record.at({"id": p.relative_to(folder).as_posix(), "image": str(p.resolve())},
                      f"{folder}/{p.relative_to(folder).as_posix()}", base) for p in found]


_PREFIX = re.compile(r"^\s*(?:(?:user|human|question|q|virtual user)\s*[:\-]\s*|\d+[.)]\s+|[-*]\s+)", re.I)


def clean_question(text: str, markers: list[str]) -> str:
    """One question from raw model text: role prefixes, later turns and trailing chatter cut."""
    text = text.lstrip()
    while any(text.startswith(m) for m in markers):  # a repeated role header opens the text: a prefix, not a new turn
        text = text[len(next(m for m in markers if text.startswith(m))):].lstrip()
    for m in markers:
        at = text.find(m)
        if at >= 0:
            text = text[:at]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    for _ in range(3):
        text = _PREFIX.sub("", text)
    if "?" in text:
        text = text[: text.index("?") + 1]
    return text.strip().strip("\"'").strip()


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def check(cfg: QuestionsConfig, backend: str) -> None:
    """What the strategy needs of the engine, before any output is opened."""
    if cfg.strategy == "vuser":
        registry.require(registry.lookup(backend), "continues_as_user", "--strategy vuser", "use --strategy instruct")


def pending(cfg: QuestionsConfig, records: list[Record], done: set[str]) -> list[Record]:
    """The images with a question not in the output yet (the unit of this stage is the image)."""
    return [r for r in records if not all(f"{r['id']}:q{k}" in done for k in range(cfg.n))]


def run(cfg: QuestionsConfig, backend, records: list[Record]) -> Iterator[Outcome]:
    """One Outcome per image: its question records (DESIGN.md section 3), in input order."""
    check(cfg, backend.name)
    from stmed.core.prompt import role_markers

    markers = role_markers(backend.processor) if backend.processor is not None else []
    for chunk in chunks(records, chunk_size(cfg.chunk_size, backend)):
        yield from _run_chunk(cfg, backend, chunk, markers)


def _run_chunk(cfg, backend, chunk, markers) -> Iterator[Outcome]:
    images: dict[int, object] = {}
    for i, rec in enumerate(chunk):
        try:
            images[i] = record_image(rec, cfg.image_root, cfg.pad_square, cfg.max_pixels)
        except RecordError as e:
            yield Outcome.failed(rec, str(e))
    order = sorted(images)
    describe_ctx = [{"role": "user", "content": cfg.describe_prompt.text}]
    if cfg.strategy == "vuser":
        describe_ctx = [{"role": "system", "content": cfg.system_prompt.text}, *describe_ctx]
    greedy = SamplingParams(cfg.describe_max_new_tokens)
    reqs = [GenRequest(describe_ctx, images[i]) for i in order]
    descriptions: dict[int, str] = {}
    tokens = 0
    for j, out in backend.generate(reqs, greedy):
        if isinstance(out, Exception):  # failed after its retries (remote) or in the model (this input)
            yield Outcome.failed(chunk[order[j]], str(out))
            continue
        descriptions[order[j]] = out.texts[0]
        tokens += out.total_tokens
    order = [i for i in order if i in descriptions]
    found: dict[int, list[tuple[str, int]]] = {i: [] for i in order}
    seen: dict[int, set[str]] = {i: set() for i in order}
    dropped = {i: 0 for i in order}
    drawn = {i: 0 for i in order}
    for _ in range(cfg.max_tries):
        need = [i for i in order if len(found[i]) < cfg.n]
        if not need:
            break
        reqs = []
        for i in need:
            missing = cfg.n - len(found[i])
            seeds = [seed_for(cfg.seed, chunk[i]["id"], drawn[i] + s) for s in range(missing)]
            drawn[i] += missing
            reqs.append(_ask_request(cfg, descriptions[i], images[i], seeds))
        # Stop at the next role header: a question is one turn, and the tokens after it are waste.
        for j, out in backend.generate(reqs, cfg.sampling(tuple(markers))):
            i = need[j]
            if isinstance(out, Exception):
                dropped[i] += len(reqs[j].seeds)  # counted as dropped; later rounds may still succeed
                continue
            tokens += out.total_tokens
            for text, seed in zip(out.texts, reqs[j].seeds):
                q = clean_question(text, markers)
                key = normalise(q)
                if len(key) < 3 or key in seen[i]:
                    dropped[i] += 1
                    continue
                seen[i].add(key)
                found[i].append((q, seed))
    for i in order:
        rec = chunk[i]
        if not found[i]:
            yield Outcome.failed(rec, f"no usable question after {cfg.max_tries} tries ({dropped[i]} dropped)")
            continue
        yield Outcome.done(*(rec.derive(id=f"{rec['id']}:q{k}", image_id=rec["id"], question=q,
                                        description=descriptions[i], gen=_gen_record(cfg, backend, seed, dropped[i]))
                             for k, (q, seed) in enumerate(found[i][: cfg.n])), tokens=tokens)
        tokens = 0


def _ask_request(cfg: QuestionsConfig, description: str, image, seeds: list[int]) -> GenRequest:
    if cfg.strategy == "vuser":
        ctx = prompts.vuser_context(description, cfg.system_prompt, cfg.describe_prompt)
        return GenRequest(ctx, image, seeds, continue_as="user")
    ctx = [{"role": "user", "content": cfg.describe_prompt.text},
           {"role": "assistant", "content": description},
           {"role": "user", "content": cfg.ask_prompt.text}]
    return GenRequest(ctx, image, seeds)


def _gen_record(cfg: QuestionsConfig, backend, seed: int, dropped: int) -> dict:
    used = [cfg.describe_prompt, cfg.system_prompt] if cfg.strategy == "vuser" else [cfg.describe_prompt, cfg.ask_prompt]
    return {**backend.describe(), "strategy": cfg.strategy, **cfg.sampling().record(), "seed": seed,
            "describe_max_new_tokens": cfg.describe_max_new_tokens, "dropped": dropped,
            "pad_square": cfg.pad_square, "max_pixels": cfg.max_pixels,
            "prompts": {p.name: p.version for p in used}, "stmed": __version__}
