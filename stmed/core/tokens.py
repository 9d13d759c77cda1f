"""One token path for sampling and training: the ids a model is trained on are the ids it saw
and said.

- A completion is tokenized after its prompt (prompt and completion together, split where the
  prompt's ids end, checked to be a true prefix), never on its own: a SentencePiece tokenizer
  encodes a lone " Yes" as ["▁", "▁Yes"], but after "ASSISTANT:" as ["▁Yes"].
- Every trained answer ends with the token that ends an assistant turn in that template
  (``<|im_end|>`` for ChatML, ``<end_of_turn>`` for Gemma, the tokenizer's EOS where the
  template writes none, as llava-hf's does); generation stops at that same token.
- BOS appears once, whether the template writes it, the tokenizer adds it, or both would.
"""

from __future__ import annotations

from dataclasses import dataclass

from stmed.core.template import render_turns

_A, _B = "\u2063STMED-A\u2063", "\u2063STMED-B\u2063"


class TokenMismatch(ValueError):
    """The template or tokenizer breaks an assumption the token path checks."""


@dataclass(frozen=True)
class TurnEnd:
    token: str  # the token that ends an assistant turn
    token_id: int
    written: bool  # the template writes it after an assistant message itself


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def turn_end(processor) -> TurnEnd:
    """The end-of-turn token of this processor's template (cached on the processor)."""
    cached = getattr(processor, "_stmed_turn_end", None)
    if cached is not None:
        return cached
    tok = tokenizer_of(processor)
    text = render_turns(processor, [{"role": "user", "content": _A}, {"role": "assistant", "content": _B}],
                        with_image=False)
    after = text.rsplit(_B, 1)[-1]
    special = special_ids(tok)
    found = next((i for i in tok(after, add_special_tokens=False)["input_ids"] if i in special), None)
    if found is not None:
        end = TurnEnd(tok.convert_ids_to_tokens(found), found, True)
    elif tok.eos_token_id is not None:
        end = TurnEnd(tok.eos_token, tok.eos_token_id, False)
    else:
        raise TokenMismatch("the chat template writes no end-of-turn token and the tokenizer has no EOS token")
    try:
        processor._stmed_turn_end = end
    except AttributeError:
        pass
    return end


def special_ids(tok) -> set[int]:
    """The tokenizer's special tokens, including added tokens marked special that no named role
    lists (Gemma's ``<end_of_turn>`` is in added_tokens_decoder only)."""
    ids = set(getattr(tok, "all_special_ids", []) or [])
    added = getattr(tok, "added_tokens_decoder", None) or {}
    return ids | {i for i, t in added.items() if getattr(t, "special", False)}


def adds_special_tokens(tok, text: str) -> bool:
    """Whether the tokenizer should add its own special tokens (BOS) to ``text``: not when the
    rendered template already starts with them (Gemma's template writes ``<bos>`` itself)."""
    added = tok("", add_special_tokens=True)["input_ids"]
    if not added:
        return True
    own = tok(text, add_special_tokens=False)["input_ids"]
    return own[: len(added)] != added


def encode(tok, text: str) -> list[int]:
    """Token ids of rendered text, BOS once."""
    return tok(text, add_special_tokens=adds_special_tokens(tok, text))["input_ids"]


def split_completion(tok, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids): the two texts tokenized together and split where the
    prompt's own ids end, which must be a true prefix of the whole."""
    head = encode(tok, prompt)
    whole = tok(prompt + completion, add_special_tokens=adds_special_tokens(tok, prompt))["input_ids"]
    if whole[: len(head)] != head:
        tail = tok.convert_ids_to_tokens(head[-3:])
        raise TokenMismatch(f"the prompt's tokens (ending {tail}) are not a prefix of prompt + answer: the "
                            "tokenizer merges across the junction")
    return head, whole[len(head):]


def close_turns(processor, rendered: str, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """``rendered`` (the template's text of ``messages``) with every assistant turn closed by the
    end-of-turn token, and the character span of each message's text in the result (an
    assistant's span runs through its end token).

    Where the template writes no end token (llava-hf writes "ASSISTANT: a USER: ..."), the
    tokenizer's EOS goes right after the answer in place of the whitespace the template put there:
    "ASSISTANT: a</s>USER: ...", LLaVA's own training format, and what generation emitted."""
    end = turn_end(processor)
    text, spans, cursor = "", [], 0
    for k, m in enumerate(messages):
        at = rendered.find(m["content"], cursor)
        if at < 0:
            raise TokenMismatch(f"the chat template does not write turn {k} as given")
        text += rendered[cursor:at]
        start = len(text)
        text += m["content"]
        cursor = at + len(m["content"])
        if m["role"] == "assistant":
            closing = rendered.find(end.token, cursor) if end.written else -1
            if closing >= 0 and not rendered[cursor:closing].strip():
                text += rendered[cursor:closing + len(end.token)]
                cursor = closing + len(end.token)
            else:
                text += end.token
                while cursor < len(rendered) and rendered[cursor] in " \t":
                    cursor += 1
        spans.append((start, len(text)))
    return text + rendered[cursor:], spans


def align_expanded(ours: list[int], theirs: list[int]) -> list[int | None]:
    """Map each of the processor's ids (``theirs``: the image placeholder expanded into image, tile
    and layout tokens) to the index of the same token in ``ours`` (the tokenizer's ids of the same
    text), or None for a token of the expanded region.

    The two agree before the image and after it; around it they may not, token for token: Gemma 3's
    processor writes "\n\n" before and after the image, which merges with the template's "\n" into
    one "\n\n\n" token. So the map is the longest common prefix and the longest common suffix;
    what lies between is the image region. Raises TokenMismatch when the two share neither end."""
    n = min(len(ours), len(theirs))
    head = next((k for k in range(n) if ours[k] != theirs[k]), n)
    tail = 0
    while tail < n - head and ours[-1 - tail] == theirs[-1 - tail]:
        tail += 1
    if head + tail == 0 and ours != theirs:
        raise TokenMismatch("the processor's ids share no start or end with the tokenizer's ids of the same text")
    mid = len(theirs) - head - tail
    return [*range(head), *([None] * mid), *range(len(ours) - tail, len(ours))]
