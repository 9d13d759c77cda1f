"""The one path from messages to prompt ids, for every engine, both trainers and ``--dry-run``.

Callers outside the token path import this module only (tests/test_architecture.py checks it).
Below it the chain runs one way and never calls back:

    prompt    messages -> prompt text -> ids; the processor's batch (image tokens expanded)
      chat      prompt text through the template: continue as assistant or user, answer text
        tokens    token facts of the template: end of turn, BOS once, prompt/completion splits
          template  which chat template renders, and the raw rendering of a conversation
"""

from __future__ import annotations

from typing import Any

from stmed.core.chat import ContinueAs, answer_ids, prompt_hash, render, role_markers, user_junction
from stmed.core.template import render_turns, rendering
from stmed.core.tokens import (TokenMismatch, adds_special_tokens, align_expanded, close_turns, encode,
                               tokenizer_of, turn_end)

__all__ = ["TOKEN_KEYS", "ContinueAs", "TokenMismatch", "adds_special_tokens", "align_expanded", "answer_ids", "close_turns",
           "encode", "encode_batch", "end_ids", "prompt_hash", "prompt_ids", "prompt_text", "render",
           "render_turns", "rendering", "role_markers", "tokenizer_of", "turn_end", "user_junction"]

# Processor outputs with one value per token: cut, padded and extended together with input_ids.
TOKEN_KEYS = ("attention_mask", "token_type_ids", "mm_token_type_ids")


def prompt_text(processor, req) -> str:
    """The prompt text a request (stmed.core.generate.GenRequest) renders to through the model's
    chat template: what every engine and both trainers start from."""
    if req.prompt is not None:
        return req.prompt
    return render(processor, req.messages, with_image=req.image is not None, continue_as=req.continue_as)


def prompt_ids(processor, req) -> list[int]:
    """The prompt as token ids with one image placeholder: the prompt text through the tokenizer
    alone, BOS once (an engine that expands the placeholder itself, as vLLM does, takes these)."""
    return encode(tokenizer_of(processor), prompt_text(processor, req))


def encode_batch(processor, texts: list[str], images: list | None, *, padding_side: str = "left",
                 pad_to_multiple_of: int | None = None):
    """Prompts (and their images) through the processor, the way every stage and training do it:
    each sample gets its own image list (families that tile or take several images per sample
    want the nesting), and BOS is added only where the rendered text does not start with it."""
    kwargs: dict[str, Any] = {"text": texts, "padding": True, "padding_side": padding_side, "return_tensors": "pt",
                              "add_special_tokens": adds_special_tokens(tokenizer_of(processor), texts[0])}
    if images is not None:
        kwargs["images"] = [[img] for img in images]
    if pad_to_multiple_of:
        kwargs["pad_to_multiple_of"] = pad_to_multiple_of
    return processor(**kwargs)


def end_ids(processor, configured=None) -> list[int]:
    """Where a sample ends: the token that ends an assistant turn in this template (the one
    training appends to every answer: turn_end), the tokenizer's EOS and ``configured`` (a
    checkpoint's generation_config EOS ids)."""
    ids = [turn_end(processor).token_id, tokenizer_of(processor).eos_token_id]
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))
