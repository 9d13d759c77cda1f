"""Preference pairs -> a ``datasets.Dataset`` in trl's vision format, images loaded lazily.

Two input formats:
- stmed's judge output: {"id", "image", "question", "chosen", "rejected", ...}
- STLLaVA-Med's: {"image", "chosen_conversations", "reject_conversations"} (LLaVA turns,
  the question in the first human turn, the answer in the last gpt turn), as JSONL or a JSON list.

The prompt is rendered exactly as ``stmed answer`` asks the question (one user turn with the
image, the assistant answering), so DPO trains the behaviour that answering uses. Rows keep
only the image path; ``with_transform`` opens the image when a batch is drawn, so 10k pairs
never sit decoded in memory.
"""

from __future__ import annotations

import functools
import hashlib
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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_image(record: Record, image_root: Path | None) -> Path:
    """The image's path, once the image has decoded: a truncated, corrupt or oversized image
    is this record's error now, not a crash in the middle of training."""
    from stmed.images import resolve_path

    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise RecordError(f"{record.where}: missing field 'image'")
    path = resolve_path(image, record.base_dir, image_root)
    if not path.is_file():
        raise RecordError(f"{record.where}: image not found: {path}")
    try:
        _decodes(str(path))
    except RecordError as e:
        raise RecordError(f"{record.where}: {e}") from None
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


def answer_prompt(processor, question: str) -> str:
    """The prompt ``stmed answer`` sends for a question: one user turn with the image."""
    from stmed.core.chat import render

    return render(processor, [{"role": "user", "content": question}], with_image=True, continue_as="assistant")


def completion(processor, question: str, answer: str, prompt: str) -> str:
    """What the template writes after the prompt for this answer (the end-of-turn token included)."""
    from stmed.core.chat import render_turns

    full = render_turns(processor, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    if full.startswith(prompt):
        return full[len(prompt):]
    tok = getattr(processor, "tokenizer", processor)  # templates that rewrite earlier turns
    return " " + answer + (tok.eos_token or "")


def lazy_images(pad_square: bool):
    """A ``with_transform`` function that opens each row's image when the batch is drawn."""

    def transform(batch: dict) -> dict:
        from stmed.images import load_image, pad_to_square

        images = []
        for path in batch["image_path"]:
            img, _ = load_image(path)
            images.append([pad_to_square(img) if pad_square else img])
        return {**batch, "images": images}

    return transform


def load_pairs(path: str | Path, processor, *, errors: ErrorSink, image_root: Path | None = None,
               pad_square: bool = False, limit: int | None = None):
    """Valid pairs as a Dataset (id, image_path, prompt, chosen, rejected, where; "images" on access).

    Bad pairs go to ``errors``; no valid pair at all is an InputError, raised before any
    model would be loaded (the processor is all this needs).
    """
    from datasets import Dataset

    records = read_any(path)
    if limit is not None:
        records = records[:limit]
    rows: dict[str, list] = {k: [] for k in ("id", "image_path", "prompt", "chosen", "rejected", "where")}
    for rec in records:
        try:
            question, chosen, rejected = parse_pair(rec)
            image = check_image(rec, image_root)
        except RecordError as e:
            errors.add(rec, str(e))
            continue
        prompt = answer_prompt(processor, question)
        for key, value in (("id", str(rec.get("id"))), ("image_path", str(image)), ("prompt", prompt),
                           ("chosen", completion(processor, question, chosen, prompt)),
                           ("rejected", completion(processor, question, rejected, prompt)), ("where", rec.where)):
            rows[key].append(value)
    if not rows["id"]:
        raise InputError(f"{path}: no usable preference pairs ({errors.count} rejected; see the errors output)")
    return Dataset.from_dict(rows).with_transform(lazy_images(pad_square))
