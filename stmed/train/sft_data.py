"""Stage-1 data: LLaVA conversations with self-asked (virtual user) turns, and their labels.

For each example and epoch a seeded draw picks which later human turns become self-asked.
A self-asked question is written in the user's role exactly where ``gen-questions --strategy
vuser`` lets the model speak (``render(..., continue_as="user")``), under the same VUSER
system prompt, and its text is supervised; so is every assistant answer. Everything else
(system, image, role headers, ordinary human turns) is -100.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from stmed.errors import RecordError
from stmed.records import Record, answer_texts
from stmed.train.data import IMAGE_TAG

IGNORE = -100


def parse_conversation(record: Record) -> list[dict]:
    """LLaVA turns (or a stmed QA record) as checked {"role", "content"} messages, or RecordError."""
    conv = record.get("conversations")
    if conv is None and isinstance(record.get("question"), str):  # stmed QA record
        answer = record.get("answer") or next(iter(answer_texts(record)), None)
        conv = [{"from": "human", "value": record["question"]}, {"from": "gpt", "value": answer}]
    if not isinstance(conv, list):
        raise RecordError(f"{record.where}: no 'conversations' list")
    if not any(isinstance(t, dict) and t.get("from") == "human" for t in conv):
        raise RecordError(f"{record.where}: the conversation has no human turn")
    messages = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt"):
            raise RecordError(f"{record.where}: turn {i} is not a {{'from': 'human'|'gpt', 'value'}} object")
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise RecordError(f"{record.where}: turn {i} has no text")
        want = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != want:
            raise RecordError(f"{record.where}: turn {i} is from {turn['from']!r}, expected {want!r} "
                              "(turns must alternate, human first)")
        messages.append({"role": "user" if want == "human" else "assistant", "content": value.strip()})
    if len(messages) % 2:
        raise RecordError(f"{record.where}: the last human turn has no answer")
    tags = sum(m["content"].count(IMAGE_TAG) for m in messages)
    if tags > 1:
        raise RecordError(f"{record.where}: {tags} {IMAGE_TAG} tags; one image per conversation is supported")
    if tags == 1 and IMAGE_TAG not in messages[0]["content"]:
        raise RecordError(f"{record.where}: {IMAGE_TAG} must be in the first human turn")
    messages[0]["content"] = messages[0]["content"].replace(IMAGE_TAG, "").strip()
    return messages


def draw_self_asked(n_turns: int, sq_ratio: float, seed: int, key: str, epoch: int) -> list[bool]:
    """Which user turns are self-asked: never the first (it holds the image and opens the talk)."""
    rng = random.Random(f"{seed}:{key}:{epoch}")  # str seeds are hashed with sha512: stable across runs
    return [False] + [rng.random() < sq_ratio for _ in range(n_turns - 1)]


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # supervised character spans of ``text``


def render_example(processor, messages: list[dict], self_asked: list[bool]) -> Rendered:
    """The conversation through the model's template, with the spans that carry loss."""
    from stmed.core.chat import render, render_turns
    from stmed.prompts import VUSER_SYSTEM

    msgs = ([{"role": "system", "content": VUSER_SYSTEM.text}] if any(self_asked) else []) + messages
    offset = len(msgs) - len(messages)
    full = render_turns(processor, msgs)
    spans = []
    for i in range(offset, len(msgs)):
        m, user_turn = msgs[i], (i - offset) // 2
        if m["role"] == "assistant":
            prefix = render(processor, msgs[:i], continue_as="assistant")
            upto = render_turns(processor, msgs[: i + 1])
        elif self_asked[user_turn]:
            prefix = render(processor, msgs[:i], continue_as="user")  # what gen-questions prompts with
            upto = prefix + m["content"]
        else:
            continue
        if not (upto.startswith(prefix) and full.startswith(upto)):
            raise RecordError("the chat template does not render conversations turn by turn")
        start, end = len(prefix), len(upto)
        spans.append((start, end))
    return Rendered(full, spans)


def token_labels(tokenizer, rendered: Rendered) -> tuple[list[int], list[int]]:
    """Token ids and labels: a token is supervised when its characters overlap a supervised span."""
    enc = tokenizer(rendered.text, return_offsets_mapping=True)
    ids, labels = enc["input_ids"], []
    for tid, (s, e) in zip(ids, enc["offset_mapping"]):
        inside = e > s and any(s < b and e > a for a, b in rendered.spans)
        labels.append(tid if inside else IGNORE)
    return ids, labels


class SFTCollator:
    """Rows {"image_path", "conversation", "id"} -> padded ids, labels and pixel values.

    The self-asked draw depends on the epoch, so the text is rendered here, per batch;
    ``epoch`` is set by the trainer callback at the start of each epoch.
    """

    def __init__(self, processor, *, sq_ratio: float, seed: int, pad_square: bool = False,
                 max_length: int | None = None):
        self.processor, self.sq_ratio, self.seed = processor, sq_ratio, seed
        self.tok = getattr(processor, "tokenizer", processor)
        self.pad_square, self.max_length, self.epoch = pad_square, max_length, 0

    def encode(self, row: dict) -> dict:
        import json

        from stmed.images import load_image, pad_to_square

        messages = json.loads(row["conversation"])
        picks = draw_self_asked(len(messages) // 2, self.sq_ratio, self.seed, row["id"], self.epoch)
        ids, labels = token_labels(self.tok, render_example(self.processor, messages, picks))
        img, _ = load_image(row["image_path"])
        img = pad_to_square(img) if self.pad_square else img
        image_token = getattr(self.processor, "image_token", IMAGE_TAG)
        probe = self.processor(text=[image_token], images=[img], return_tensors="pt")
        image_id = self.tok.convert_tokens_to_ids(image_token)
        n = int((probe["input_ids"][0] == image_id).sum())  # how many tokens the processor gives the image
        at = ids.index(image_id)
        ids = ids[:at] + [image_id] * n + ids[at + 1:]
        labels = labels[:at] + [IGNORE] * n + labels[at + 1:]
        if self.max_length is not None and len(ids) > self.max_length:
            ids, labels = ids[: max(self.max_length, at + n)], labels[: max(self.max_length, at + n)]
        extra = {k: v for k, v in probe.items() if k not in ("input_ids", "attention_mask")}
        return {"input_ids": ids, "labels": labels, **extra}

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        items = [self.encode(r) for r in rows]
        width = max(len(it["input_ids"]) for it in items)
        pad = self.tok.pad_token_id
        batch = {
            "input_ids": torch.tensor([it["input_ids"] + [pad] * (width - len(it["input_ids"])) for it in items]),
            "labels": torch.tensor([it["labels"] + [IGNORE] * (width - len(it["labels"])) for it in items]),
            "attention_mask": torch.tensor([[1] * len(it["input_ids"]) + [0] * (width - len(it["input_ids"]))
                                            for it in items]),
        }
        for key in items[0]:
            if key not in batch:
                batch[key] = torch.cat([it[key] for it in items])
        return batch
