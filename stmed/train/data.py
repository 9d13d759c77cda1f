"""Preference pairs -> a ``datasets.Dataset`` in trl's vision format, images loaded lazily.

Two input formats:
- stmed's judge output: {"id", "image", "question", "chosen", "rejected", ...}
- STLLaVA-Med's: {"image", "chosen_conversations", "reject_conversations"} (LLaVA turns,
  the question in the first human turn, the answer in the last gpt turn), as JSONL or a JSON list.

The prompt is rendered exactly as ``stmed answer`` asked the question: the messages and image
settings that answer records carry under ``answer_prompt`` (system prompt and template applied),
else one user turn with the image; answers are tokenized after that prompt and end with the
template's end-of-turn token (stmed.core.tokens), so DPO trains the ids generation emits. Rows keep
only the image path; ``with_transform`` opens the image when a batch is drawn, so 10k pairs
never sit decoded in memory.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from stmed.errors import InputError, RecordError
from stmed.records import ErrorSink, Record, read_records

IMAGE_TAG = "<image>"


def read_any(path: str | Path) -> list[Record]:
    """A JSONL file, or one JSON list (LLaVA's and STLLaVA-Med's releases); ``where`` is file:line or file[index]."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    with open(p, "rb") as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"["):
        return read_records(p, unique_ids=False)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise InputError(f"{path}[{i}]: expected a JSON object, got {type(item).__name__}")
        item.setdefault("id", f"{item.get('image', 'item')}:{i}")
        out.append(Record.at(item, f"{path}[{i}]", p.resolve().parent))
    return out


def check_image(record: Record, image_root: Path | None) -> Path:
    """The image's path, once the image has decoded: a truncated, corrupt or oversized image
    is this record's error now, not a crash in the middle of training."""
    from stmed.images import resolve_path

    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise RecordError(f"{record.where}: missing field 'image'")
    try:
        path = resolve_path(image, record.base_dir, image_root)
        if not path.is_file():
            raise RecordError(f"image not found: {path}")
        _decodes(str(path))
    except RecordError as e:
        raise RecordError(f"{record.where}: {e}") from None
    except OSError as e:  # a name too long, a permission denied
        raise RecordError(f"{record.where}: cannot read the image ({e.strerror or e})") from None
    return path


@functools.lru_cache(maxsize=4096)
def _decodes(path: str) -> None:
    """Decode an image once (pairs share images); raises ImageError naming the file."""
    from stmed.images import load_image

    load_image(path)


def _text(value, where: str, name: str) -> str:
    if value is not None and not isinstance(value, str):
        raise RecordError(f"{where}: field {name} must be str, got {type(value).__name__}")
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}: empty or missing {name}")
    return value.strip()


def _from_conversations(record: Record, key: str) -> tuple[str, str]:
    conv = record.get(key)
    if not isinstance(conv, list) or len(conv) < 2:
        raise RecordError(f"{record.where}: {key!r} must be a list of at least two turns")
    humans = [t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "human"]
    gpts = [t.get("value") for t in conv if isinstance(t, dict) and t.get("from") == "gpt"]
    if not humans or not gpts:
        raise RecordError(f"{record.where}: {key!r} needs a human and a gpt turn")
    question = _text(humans[0], record.where, f"question in {key!r}").replace(IMAGE_TAG, "").strip()
    return question, _text(gpts[-1], record.where, f"answer in {key!r}")


def parse_pair(record: Record) -> tuple[str, str, str]:
    """(question, chosen, rejected) from either format, or RecordError."""
    if "chosen_conversations" in record or "reject_conversations" in record:
        q1, chosen = _from_conversations(record, "chosen_conversations")
        q2, rejected = _from_conversations(record, "reject_conversations")
        if q1 != q2:
            raise RecordError(f"{record.where}: chosen and rejected conversations ask different questions")
        question = q1
    else:
        question = _text(record.get("question"), record.where, "'question'")
        chosen = _text(record.get("chosen"), record.where, "'chosen'")
        rejected = _text(record.get("rejected"), record.where, "'rejected'")
    if chosen == rejected:
        raise RecordError(f"{record.where}: chosen and rejected answers are identical")
    return question, chosen, rejected


ANSWER_PROMPT = "answer_prompt"  # the key `stmed answer` records its prompt and image settings under
IMAGE_SETTINGS = ("pad_square", "max_pixels")


def prompt_messages(record: Record, question: str) -> list[dict]:
    """The messages the answers were sampled from (``answer_prompt.messages``, written by
    ``stmed answer``: system prompt and template applied), or one user turn holding the question."""
    given = record.get(ANSWER_PROMPT)
    if given is None:
        return [{"role": "user", "content": question}]
    msgs = given.get("messages") if isinstance(given, dict) else None
    if (not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "user"
            or any(not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                   or not isinstance(m.get("content"), str) for m in msgs)):
        raise RecordError(f"{record.where}: {ANSWER_PROMPT}.messages must be a list of {{role, content}} turns "
                          "ending with the user's")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def encode_pair(processor, messages: list[dict], chosen: str, rejected: str,
                emitted: dict[str, list[int]] | None = None) -> dict:
    """{"prompt", "chosen_ids", "rejected_ids"}: the prompt text as sampling renders it and each
    answer's ids after it, end-of-turn token included (stmed.core.tokens). An answer whose
    emitted ids the record carries (``emitted``: text -> ids, from ``stmed answer``) is trained
    on those ids, the ones the model said, plus the end token."""
    from stmed.core.prompt import answer_ids, render, turn_end

    prompt = render(processor, messages, with_image=True, continue_as="assistant")  # rendered once for the pair
    end = turn_end(processor).token_id

    def ids(answer: str) -> list[int]:
        said = (emitted or {}).get(answer)
        return [*said, end] if said is not None else answer_ids(processor, messages, answer, prompt=prompt)

    return {"prompt": prompt, "chosen_ids": ids(chosen), "rejected_ids": ids(rejected)}


def emitted_ids(record: Record, vocab_size: int) -> dict[str, list[int]]:
    """answer text -> the ids the model emitted for it, from the record's ``answers`` and
    ``corrupt_answers`` (a hard negative's rejected side; both written by ``stmed answer`` with a
    local engine; absent for a served model or another tool's pairs)."""
    out: dict[str, list[int]] = {}
    from stmed.corrupt import ANSWERS

    for key in ("answers", ANSWERS):
        answers = record.get(key)
        for k, a in enumerate(answers if isinstance(answers, list) else []):
            if not isinstance(a, dict) or "ids" not in a:
                continue
            ids = a["ids"]
            if (not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
                    or any(not 0 <= i < vocab_size for i in ids)):
                raise RecordError(f"{record.where}: {key}[{k}].ids must be a list of this model's token ids")
            if isinstance(a.get("text"), str):
                out.setdefault(a["text"], ids)  # a real-image answer first, should the texts be the same
    return out


def same_prompt(record: Record, prompt: str) -> None:
    """An InputError when the record says its answers were sampled from another prompt text than
    the one this model's chat template renders (another checkpoint family or --chat-template)."""
    from stmed.core.prompt import prompt_hash

    given = record.get(ANSWER_PROMPT)
    sampled = given.get("rendered_sha256") if isinstance(given, dict) else None
    if sampled is not None and sampled != prompt_hash(prompt):
        raise InputError(f"{record.where}: the answers were sampled from a prompt that this model's chat template "
                         "renders differently; train with the chat template they were sampled with (--chat-template)")


def image_settings(records: list[Record], flags: dict) -> dict:
    """The image settings the answers were sampled with (``answer_prompt``), which training must
    use: a flag that contradicts them, or records that disagree, is an InputError naming file:line.
    Records that say nothing take the flags (unset: no padding, no pixel bound)."""
    found: dict[str, tuple[object, str]] = {}
    for rec in records:
        given = rec.get(ANSWER_PROMPT)
        if not isinstance(given, dict):
            continue
        for key in IMAGE_SETTINGS:
            if key not in given:
                continue
            value, seen = given[key], found.get(key)
            if seen is not None and seen[0] != value:
                raise InputError(f"{rec.where}: answers sampled with {key}={value!r}, but {seen[1]} says "
                                 f"{seen[0]!r}; train on pairs sampled one way")
            found.setdefault(key, (value, rec.where))
    out = {}
    for key in IMAGE_SETTINGS:
        flag = flags.get(key)
        if key in found and flag is not None and flag != found[key][0]:
            name = "--pad-square" if key == "pad_square" else "--max-pixels"
            raise InputError(f"{found[key][1]}: the answers were sampled with {key}={found[key][0]!r}, which "
                             f"contradicts {name} {flag}; drop the flag to train on the images they were sampled from")
        out[key] = found[key][0] if key in found else flag
    out["pad_square"] = bool(out["pad_square"])
    return out


def lazy_images(settings: dict):
    """A ``with_transform`` function that opens each row's image when the batch is drawn (and
    its corrupted copy, for the image-conditional term, when the rows carry one)."""

    def transform(batch: dict) -> dict:
        from stmed.images import load_image, prepare
        from stmed.train.variants import corrupted

        images, bad = [], []
        for i, path in enumerate(batch["image_path"]):
            img, _ = load_image(path)
            images.append([prepare(img, settings["pad_square"], settings["max_pixels"])])
            if "corrupt" in batch:
                bad.append([prepare(corrupted(img, batch["corrupt"][i]), settings["pad_square"],
                                    settings["max_pixels"])])
        return {**batch, "images": images, **({"corrupt_images": bad} if "corrupt" in batch else {})}

    return transform


def load_pairs(path: str | Path, processor, *, errors: ErrorSink, image_root: Path | None = None,
               flags: dict | None = None, limit: int | None = None, weight: str = "none",
               image_pref_corrupt=None, seed: int = 0):
    """(Dataset, image settings): valid pairs (id, image_path, prompt, chosen_ids, rejected_ids,
    where; "images" on access), each prompt rendered as the answers were sampled, each answer
    tokenized after it (stmed.core.tokens) and ending with the end-of-turn token.

    Beyond the paper (stmed.train.variants): ``weight`` names the field each pair's loss is scaled
    by (a "weight" column, mean 1); ``image_pref_corrupt`` (a Corruption) adds a "corrupt" column
    and, on access, "corrupt_images" for the image-conditional term.

    Bad pairs go to ``errors``; no valid pair at all is an InputError, raised before any
    model would be loaded (the processor is all this needs).
    """
    from datasets import Dataset

    from stmed.core.prompt import TokenMismatch

    records = read_any(path)
    if limit is not None:
        records = records[:limit]
    settings = image_settings(records, flags or {})
    vocab = len(getattr(processor, "tokenizer", processor))
    from stmed.train.variants import corrupt_spec, normalised, record_weight

    rows: dict[str, list] = {k: [] for k in ("id", "image_path", "prompt", "chosen_ids", "rejected_ids", "where")}
    extra: dict[str, list] = {**({"weight": []} if weight != "none" else {}),
                              **({"corrupt": []} if image_pref_corrupt is not None else {})}
    for rec in records:
        try:
            question, chosen, rejected = parse_pair(rec)
            messages = prompt_messages(rec, question)
            image = check_image(rec, image_root)
            encoded = encode_pair(processor, messages, chosen, rejected, emitted_ids(rec, vocab))
            same_prompt(rec, encoded["prompt"])
            more = {**({"weight": record_weight(rec, weight)} if weight != "none" else {}),
                    **({"corrupt": corrupt_spec(rec, image_pref_corrupt, seed)} if "corrupt" in extra else {})}
        except RecordError as e:
            errors.add(rec, str(e))
            continue
        except TokenMismatch as e:
            errors.add(rec, f"{rec.where}: {e}")
            continue
        for key, value in (("id", str(rec.get("id"))), ("image_path", str(image)), ("where", rec.where), *encoded.items(),
                           *more.items()):
            (rows if key in rows else extra)[key].append(value)
    if not rows["id"]:
        raise InputError(f"{path}: no usable preference pairs ({errors.count} rejected; see the errors output)")
    if "weight" in extra:
        extra["weight"] = normalised(extra["weight"], weight)
    return Dataset.from_dict({**rows, **extra}).with_transform(lazy_images(settings)), settings
