"""Render conversations into prompt text through the model's own chat template.

Messages are plain ``{"role", "content": str}`` dicts (OpenAI style); the image goes with the
first user turn. ``continue_as="user"`` renders the conversation so that the model's next words
are spoken in the user's role: the self-questioning ("virtual user") strategy of STLLaVA-Med.
"""

from __future__ import annotations

from typing import Literal

ContinueAs = Literal["assistant", "user"]
_SENTINEL = "\u2063STMED-CUT\u2063"  # invisible separator: never produced by a tokenizer round trip

# LLaVA-1.5's plain format, for processors that come without a chat template.
FALLBACK_ROLES = {"system": "{text}\n", "user": "USER: {text} ", "assistant": "ASSISTANT: {text}</s>"}


def _hf_messages(messages: list[dict], with_image: bool) -> list[dict]:
    out, placed = [], not with_image
    for m in messages:
        parts: list[dict] = []
        if m["role"] == "user" and not placed:
            parts.append({"type": "image"})
            placed = True
        parts.append({"type": "text", "text": m["content"]})
        out.append({"role": m["role"], "content": parts})
    return out


def _fold_system(messages: list[dict]) -> list[dict]:
    """For templates without a system role: the system text opens the first user turn."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], list(messages[1:])
    for i, m in enumerate(rest):
        if m["role"] == "user":
            rest[i] = {**m, "content": f"{system}\n\n{m['content']}"}
            break
    return rest


def _apply(processor, messages: list[dict], with_image: bool, generation_prompt: bool) -> str:
    template = getattr(processor, "chat_template", None) or getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    if not template:
        return _fallback(processor, messages, with_image, generation_prompt)
    try:
        return processor.apply_chat_template(
            _hf_messages(messages, with_image), add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception:  # jinja raises for a system role the template does not know
        if messages and messages[0]["role"] == "system":
            return _apply(processor, _fold_system(messages), with_image, generation_prompt)
        raise


def _fallback(processor, messages: list[dict], with_image: bool, generation_prompt: bool) -> str:
    image_token = getattr(processor, "image_token", "<image>")
    text, placed = "", not with_image
    for m in messages:
        content = m["content"]
        if m["role"] == "user" and not placed:
            content, placed = f"{image_token}\n{content}", True
        text += FALLBACK_ROLES[m["role"]].format(text=content)
    return text + ("ASSISTANT:" if generation_prompt else "")


def render(processor, messages: list[dict], *, with_image: bool = True, continue_as: ContinueAs = "assistant") -> str:
    """Prompt text whose continuation is the next ``continue_as`` turn."""
    if continue_as == "assistant":
        return _apply(processor, messages, with_image, generation_prompt=True)
    # Render one more user turn holding a sentinel and cut there: whatever the template puts
    # before a user's words (role header, separators) is kept, for any model's template.
    probe = [*messages, {"role": "user", "content": _SENTINEL}]
    text = _apply(processor, probe, with_image, generation_prompt=False)
    cut = text.find(_SENTINEL)
    assert cut >= 0, "chat template dropped the user turn; cannot continue in the user's role"
    return text[:cut]


def render_turns(processor, messages: list[dict], *, with_image: bool = True) -> str:
    """The whole conversation as the template writes it, with no turn opened after it (training)."""
    return _apply(processor, messages, with_image, generation_prompt=False)


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
