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
from stmed.train.data import IMAGE_TAG, prompt_messages

IGNORE = -100


def parse_conversation(record: Record) -> list[dict]:
    """LLaVA turns (or a stmed QA record) as checked {"role", "content"} messages, or RecordError."""
    conv = record.get("conversations")
    system = None
    if conv is None and isinstance(record.get("question"), str):  # stmed QA record
        answer = record.get("answer") or next(iter(answer_texts(record)), None)
        asked = prompt_messages(record, record["question"])  # as `stmed answer` asked it: its system prompt and template
        system = next((m for m in asked if m["role"] == "system"), None)
        conv = [{"from": "human", "value": asked[-1]["content"]}, {"from": "gpt", "value": answer}]
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
    return ([system] if system else []) + messages


def draw_self_asked(n_turns: int, sq_ratio: float, seed: int, key: str, epoch: int) -> list[bool]:
    """Which user turns are self-asked: never the first (it holds the image and opens the talk)."""
    rng = random.Random(f"{seed}:{key}:{epoch}")  # str seeds are hashed with sha512: stable across runs
    return [False] + [rng.random() < sq_ratio for _ in range(n_turns - 1)]


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # supervised character spans of ``text``


def render_example(processor, messages: list[dict], self_asked: list[bool]) -> Rendered:
    """The conversation through the model's template, with the spans that carry loss.

    Each answer is supervised through the token that ends an assistant turn (written in where the
    template writes none, as llava-hf's does: the tokenizer's EOS), never the next turn's header;
    each self-asked question is supervised from where ``gen-questions --strategy vuser`` lets the
    model speak (chat.user_junction) to its last character."""
    from stmed.core.prompt import TokenMismatch, close_turns, render_turns
    from stmed.prompts import VUSER_SYSTEM

    if messages[0]["role"] == "system":  # the system prompt the answer was sampled with
        msgs = messages
    else:
        msgs = ([{"role": "system", "content": VUSER_SYSTEM.text}] if any(self_asked) else []) + messages
    offset = 1 if msgs[0]["role"] == "system" else 0
    try:
        text, spans = close_turns(processor, render_turns(processor, msgs), msgs)
    except TokenMismatch as e:
        raise RecordError(str(e)) from None
    kept = [span for i, (m, span) in enumerate(zip(msgs, spans)) if i >= offset
            and (m["role"] == "assistant" or self_asked[(i - offset) // 2])]
    return Rendered(text.rstrip(" \t"), kept)


def token_labels(tokenizer, rendered: Rendered) -> tuple[list[int], list[int]]:
    """Token ids and labels: a token is supervised when its characters overlap a supervised span."""
    from stmed.core.prompt import adds_special_tokens

    enc = tokenizer(rendered.text, return_offsets_mapping=True,
                    add_special_tokens=adds_special_tokens(tokenizer, rendered.text))
    ids, labels = enc["input_ids"], []
    for tid, (s, e) in zip(ids, enc["offset_mapping"]):
        inside = e > s and any(s < b and e > a for a, b in rendered.spans)
        labels.append(tid if inside else IGNORE)
    return ids, labels


class SFTCollator:
    """Rows {"image_path", "conversation", "id"} -> padded ids, labels and what the processor adds.

    The self-asked draw depends on the epoch, so the text is rendered here, per batch;
    ``epoch`` is set by the trainer callback at the start of each epoch. The ids are the
    processor's own for the whole text and its image (image, tile and layout tokens and every
    per-token output such as mm_token_type_ids, as generation gets them); labels are mapped
    onto them from the tokenizer's ids of the same text (stmed.core.tokens.align_expanded).
    """

    def __init__(self, processor, *, sq_ratio: float, seed: int, pad_square: bool = False,
                 max_pixels: int | None = None, max_length: int | None = None):
        self.processor, self.sq_ratio, self.seed = processor, sq_ratio, seed
        self.tok = getattr(processor, "tokenizer", processor)
        self.pad_square, self.max_pixels, self.max_length, self.epoch = pad_square, max_pixels, max_length, 0

    def encode(self, row: dict) -> dict:
        import json

        from stmed.core.prompt import TOKEN_KEYS, TokenMismatch, align_expanded, encode_batch
        from stmed.images import load_image, prepare

        messages = json.loads(row["conversation"])
        turns = sum(m["role"] == "user" for m in messages)
        picks = draw_self_asked(turns, self.sq_ratio, self.seed, row["id"], self.epoch)
        rendered = render_example(self.processor, messages, picks)
        ids, labels = token_labels(self.tok, rendered)
        img, _ = load_image(row["image_path"])
        enc = encode_batch(self.processor, [rendered.text], [prepare(img, self.pad_square, self.max_pixels)],
                           padding_side="right")
        theirs = enc["input_ids"][0].tolist()
        try:
            where = align_expanded(ids, theirs)
        except TokenMismatch as e:
            raise RecordError(f"{row.get('where', row['id'])}: {e}") from None
        mapped = {j for j in where if j is not None}
        if any(lab != IGNORE for j, lab in enumerate(labels) if j not in mapped):
            raise RecordError(f"{row.get('where', row['id'])}: the processor tokenizes a supervised turn differently "
                              "from the tokenizer (it must differ only around the image)")
        labels = [IGNORE if j is None else labels[j] for j in where]
        out = {"input_ids": theirs, "labels": labels}
        out.update({k: enc[k][0].tolist() for k in TOKEN_KEYS if k in enc})
        if self.max_length is not None and len(theirs) > self.max_length:
            last_added = max((k for k, j in enumerate(where) if j is None), default=-1)
            keep = max(self.max_length, last_added + 1)  # never cut image tokens
            out = {k: v[:keep] for k, v in out.items()}
        out.update({k: v for k, v in enc.items() if k not in out})  # pixel values, image grids
        return out

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        items = [self.encode(r) for r in rows]
        width = max(len(it["input_ids"]) for it in items)
        pads = {"input_ids": self.tok.pad_token_id, "labels": IGNORE}
        batch = {}
        for key in items[0]:
            if isinstance(items[0][key], list):  # per token: padded on the right
                fill = pads.get(key, 0)
                batch[key] = torch.tensor([it[key] + [fill] * (width - len(it[key])) for it in items])
            else:
                batch[key] = torch.cat([it[key] for it in items])
        return batch
