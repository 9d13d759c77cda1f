"""Render conversations into prompt text through the model's own chat template: the one
function every stage renders prompts with, for sampling and for training alike.

Messages are plain ``{"role", "content": str}`` dicts (OpenAI style); the image goes with the
first user turn. ``continue_as="user"`` renders the conversation so that the model's next words
are spoken in the user's role: the self-questioning ("virtual user") strategy of STLLaVA-Med.
"""

from __future__ import annotations

from typing import Literal

from stmed.errors import InputError

ContinueAs = Literal["assistant", "user"]
_SENTINEL = "\u2063STMED-CUT\u2063"  # invisible separator: never produced by a tokenizer round trip


class NoTemplate(InputError):
    """No usable chat template: the message names the --chat-template flag."""


def use_template(processor, path: str | None = None) -> None:
    """Give the processor the template it renders with: ``path`` (--chat-template FILE) when given,
    else its own, else its tokenizer's (a checkpoint whose template sits only in tokenizer_config.json).
    Checked here, once, to render an image turn; a template that cannot is NoTemplate."""
    from pathlib import Path

    tok = getattr(processor, "tokenizer", None)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise NoTemplate(f"--chat-template {path}: no such file")
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":  # chat_template.json as checkpoints ship it
            import json

            try:
                text = json.loads(text)["chat_template"]
            except (ValueError, KeyError, TypeError):
                raise NoTemplate(f"--chat-template {path}: expected a JSON object with a 'chat_template' key") from None
        processor.chat_template = text
        if tok is not None:
            tok.chat_template = text
    elif not getattr(processor, "chat_template", None) and getattr(tok, "chat_template", None):
        processor.chat_template = tok.chat_template
    if not getattr(processor, "chat_template", None):
        raise NoTemplate("this model comes with no chat template; pass --chat-template FILE (a Jinja template, "
                         "or a chat_template.json)")
    try:
        with_image = render(processor, [{"role": "user", "content": _SENTINEL}], continue_as="assistant")
        without = render(processor, [{"role": "user", "content": _SENTINEL}], with_image=False, continue_as="assistant")
    except Exception as e:  # jinja's errors: the template is the user's input here
        raise NoTemplate(f"the chat template cannot render a user turn ({type(e).__name__}: {e}); pass "
                         "--chat-template FILE") from None
    if with_image.count(_SENTINEL) != 1 or with_image == without or "'type'" in with_image:
        raise NoTemplate("the chat template cannot render an image turn (it drops the image or writes the "
                         "message parts as text); pass --chat-template FILE with one that can")


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
    try:
        return processor.apply_chat_template(
            _hf_messages(messages, with_image), add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception:  # jinja raises for a system role the template does not know
        if messages and messages[0]["role"] == "system":
            return _apply(processor, _fold_system(messages), with_image, generation_prompt)
        raise


def render(processor, messages: list[dict], *, with_image: bool = True, continue_as: ContinueAs = "assistant") -> str:
    """Prompt text whose continuation is the next ``continue_as`` turn."""
    if continue_as == "assistant":
        return _closed(processor, messages, _apply(processor, messages, with_image, generation_prompt=True))
    # Render one more user turn holding a sentinel and cut there: whatever the template puts
    # before a user's words (role header, separators) is kept, for any model's template.
    probe = [*messages, {"role": "user", "content": _SENTINEL}]
    text = _closed(processor, messages, _apply(processor, probe, with_image, generation_prompt=False))
    cut = text.find(_SENTINEL)
    assert cut >= 0, "chat template dropped the user turn; cannot continue in the user's role"
    return user_junction(processor, text[:cut])


def _closed(processor, messages: list[dict], text: str) -> str:
    """Earlier assistant turns closed by their end-of-turn token, as training writes them
    (stmed.core.tokens.close_turns): a prompt that continues after an answer sees what the model
    emitted there."""
    if not any(m["role"] == "assistant" for m in messages):
        return text
    from stmed.core.tokens import close_turns

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
