"""Render conversations into prompt text through the model's own chat template: the one
function every stage renders prompts with, for sampling and for training alike.

Messages are plain ``{"role", "content": str}`` dicts (OpenAI style); the image goes with the
first user turn. ``continue_as="user"`` renders the conversation so that the model's next words
are spoken in the user's role: the self-questioning ("virtual user") strategy of STLLaVA-Med.
"""

from __future__ import annotations

from typing import Literal

from stmed.core.template import SENTINEL, apply_template, render_turns
from stmed.core.tokens import TokenMismatch, close_turns, split_completion, tokenizer_of, turn_end

ContinueAs = Literal["assistant", "user"]


def render(processor, messages: list[dict], *, with_image: bool = True, continue_as: ContinueAs = "assistant") -> str:
    """Prompt text whose continuation is the next ``continue_as`` turn."""
    if continue_as == "assistant":
        return _closed(processor, messages, apply_template(processor, messages, with_image, generation_prompt=True))
    # Render one more user turn holding a sentinel and cut there: whatever the template puts
    # before a user's words (role header, separators) is kept, for any model's template.
    probe = [*messages, {"role": "user", "content": SENTINEL}]
    text = _closed(processor, messages, apply_template(processor, probe, with_image, generation_prompt=False))
    cut = text.find(SENTINEL)
    assert cut >= 0, "chat template dropped the user turn; cannot continue in the user's role"
    return user_junction(processor, text[:cut])


def _closed(processor, messages: list[dict], text: str) -> str:
    """Earlier assistant turns closed by their end-of-turn token, as training writes them
    (stmed.core.tokens.close_turns): a prompt that continues after an answer sees what the model
    emitted there."""
    if not any(m["role"] == "assistant" for m in messages):
        return text
    return close_turns(processor, text, messages)[0]


def user_junction(processor, prefix: str) -> str:
    """``prefix`` (text up to where a user's words begin) without trailing whitespace that the
    tokenizer would merge into the user's first word: "USER: " ends in a lone "▁" that no
    rendered user turn has ("USER: What" is [..., ":", "▁What"]), so the prompt ends at "USER:"."""
    tok = getattr(processor, "tokenizer", processor)
    whole = tok(prefix + "What", add_special_tokens=False)["input_ids"]
    while prefix and prefix[-1] in " \t":
        head = tok(prefix, add_special_tokens=False)["input_ids"]
        if whole[: len(head)] == head:
            break
        prefix = prefix[:-1]
    return prefix


def prompt_hash(text: str) -> str:
    """A short fingerprint of rendered prompt text: answer records keep it, so training can tell
    that it renders the very prompt the answers were sampled from."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def role_markers(processor) -> list[str]:
    """Text that opens the next turn in this template: a sample stops there and is cut there.

    Found by rendering sentinel turns and reading what follows them, with special tokens taken
    out (decoded text never shows them). A bare role word such as ChatML's "assistant" is left
    out: it would cut ordinary sentences, and such templates end a turn with an end-of-turn token.
    """
    first, second = "\u2063STMED-A\u2063", "\u2063STMED-B\u2063"
    a = render(processor, [{"role": "user", "content": first}], with_image=False, continue_as="assistant")
    u = render(processor, [{"role": "user", "content": first}, {"role": "assistant", "content": second}],
               with_image=False, continue_as="user")
    tok = getattr(processor, "tokenizer", processor)
    markers = set()
    for m in (a.rsplit(first, 1)[-1], u.rsplit(second, 1)[-1]):
        for special in getattr(tok, "all_special_tokens", []):
            m = m.replace(special, " ")
        m = m.strip()
        if m and not m.isalpha():
            markers.add(m)
    return sorted(markers, key=len, reverse=True)


def assistant_text(processor, messages: list[dict], answer: str, *, with_image: bool = True,
                   prompt: str | None = None) -> str:
    """What the template writes after the generation prompt for ``answer``, through the end of
    the turn: the end-of-turn token included (the tokenizer's EOS where the template writes none),
    nothing after it (a newline, the next turn's header). ``prompt``: that generation prompt,
    when the caller has rendered it already."""
    if prompt is None:
        prompt = render(processor, messages, with_image=with_image, continue_as="assistant")
    full = render_turns(processor, [*messages, {"role": "assistant", "content": answer}], with_image=with_image)
    end = turn_end(processor)
    if not full.startswith(prompt):  # a template that rewrites earlier turns: the answer as said
        return answer + end.token
    written = full[len(prompt):]
    at = written.rfind(answer)
    if at < 0:
        raise TokenMismatch("the chat template does not write the answer as given")
    head, rest = written[: at + len(answer)], written[at + len(answer):]
    if end.written and end.token in rest:
        return head + rest[: rest.index(end.token) + len(end.token)]
    return head + end.token


def answer_ids(processor, messages: list[dict], answer: str, *, with_image: bool = True,
               prompt: str | None = None) -> list[int]:
    """The ids trained for ``answer`` after the prompt of ``messages``: as generated, plus the end
    token. ``prompt``: the rendered generation prompt, when the caller has it already."""
    if prompt is None:
        prompt = render(processor, messages, with_image=with_image, continue_as="assistant")
    text = assistant_text(processor, messages, answer, with_image=with_image, prompt=prompt)
    return split_completion(tokenizer_of(processor), prompt, text)[1]
