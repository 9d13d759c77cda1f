"""The model's chat template: which one a processor renders with, and the raw rendering of a
conversation through it. Everything that renders prompts (``chat``) or reads turn structure
(``tokens``) sits on top of this module.
"""

from __future__ import annotations

from stmed.errors import InputError

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
        turn = [{"role": "user", "content": _SENTINEL}]
        with_image = apply_template(processor, turn, True, generation_prompt=True)
        without = apply_template(processor, turn, False, generation_prompt=True)
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


def apply_template(processor, messages: list[dict], with_image: bool, generation_prompt: bool) -> str:
    try:
        return processor.apply_chat_template(
            _hf_messages(messages, with_image), add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception:  # jinja raises for a system role the template does not know
        if messages and messages[0]["role"] == "system":
            return apply_template(processor, _fold_system(messages), with_image, generation_prompt)
        raise


def render_turns(processor, messages: list[dict], *, with_image: bool = True) -> str:
    """The whole conversation as the template writes it, with no turn opened after it (training)."""
    return apply_template(processor, messages, with_image, generation_prompt=False)
