"""The model's chat template: which one a processor renders with, and the raw rendering of a
conversation through it. Everything that renders prompts (``chat``) or reads turn structure
(``tokens``) sits on top of this module.
"""

from __future__ import annotations

from stmed.errors import InputError

SENTINEL = "\u2063STMED-CUT\u2063"  # invisible separator: never produced by a tokenizer round trip


class NoTemplate(InputError):
    """No usable chat template: the message names the --chat-template flag."""


def use_template(processor, path: str | None = None) -> None:
    """Give the processor the template it renders with: ``path`` (--chat-template FILE) when given,
    else its own, else its tokenizer's (a checkpoint whose template sits only in tokenizer_config.json).
    Checked here, once, to render an image turn; a template that cannot is NoTemplate."""
    from pathlib import Path

    tok = getattr(processor, "tokenizer", None)
    _set_rendering(processor, None)
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
    turn = [{"role": "user", "content": SENTINEL}]
    try:
        with_image = apply_template(processor, turn, True, generation_prompt=True)
        without = apply_template(processor, turn, False, generation_prompt=True)
    except Exception as e:  # jinja's errors: the template is the user's input here
        if not _takes_strings(processor):
            raise NoTemplate(f"the chat template cannot render a user turn ({type(e).__name__}: {e}); pass "
                             "--chat-template FILE") from None
        _set_rendering(processor, STRING_CONTENT)
        with_image = apply_template(processor, turn, True, generation_prompt=True)
        without = apply_template(processor, turn, False, generation_prompt=True)
        import sys

        if processor.chat_template not in _SAID:  # once per process, however often the processor loads
            _SAID.add(processor.chat_template)
            print(f"stmed: the chat template takes string content only; image turns are rendered as the original "
                  f"LLaVA code wrote them: {image_token(processor)!r} and a newline before the text", file=sys.stderr)
    if with_image.count(SENTINEL) != 1 or with_image == without or "'type'" in with_image:
        raise NoTemplate("the chat template cannot render an image turn (it drops the image or writes the "
                         "message parts as text); pass --chat-template FILE with one that can")


# A template whose content must be a string (the Mistral-Instruct template converted LLaVA-Med
# checkpoints often carry: '[INST] ' + message['content'] + ' [/INST]'): the image goes in as the
# original LLaVA code puts it, DEFAULT_IMAGE_TOKEN + "\n" before the first question
# (haotian-liu/LLaVA llava/eval/model_vqa.py; the processor expands the token).
_SAID: set[str] = set()
STRING_CONTENT = "string-content: image token + newline before the text"


_RENDERING: dict[int, str] = {}  # id(processor) -> rendering; kept off the processor, which save_pretrained writes


def rendering(processor) -> str | None:
    """How image turns are rendered, where it is not the template's own (records and --dry-run say it)."""
    return _RENDERING.get(id(processor))


def _set_rendering(processor, how: str | None) -> None:
    import weakref

    if how is None:
        _RENDERING.pop(id(processor), None)
        return
    _RENDERING[id(processor)] = how
    weakref.finalize(processor, _RENDERING.pop, id(processor), None)


def image_token(processor) -> str:
    tok = getattr(processor, "tokenizer", None)
    return getattr(processor, "image_token", None) or getattr(tok, "image_token", None) or "<image>"


def _takes_strings(processor) -> bool:
    """Whether the template renders a user turn whose content is a plain string."""
    if getattr(processor, "tokenizer", None) is None or not getattr(processor, "image_token", None):
        return False
    try:
        _render_strings(processor, [{"role": "user", "content": SENTINEL}], False, True)
        return True
    except Exception:
        return False


def _render_strings(processor, messages: list[dict], with_image: bool, generation_prompt: bool) -> str:
    out, placed = [], not with_image
    for m in messages:
        if m["role"] == "user" and not placed:
            m, placed = {**m, "content": f"{image_token(processor)}\n{m['content']}"}, True
        out.append({"role": m["role"], "content": m["content"]})
    return processor.tokenizer.apply_chat_template(out, chat_template=processor.chat_template,
                                                   add_generation_prompt=generation_prompt, tokenize=False)


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
        if rendering(processor) == STRING_CONTENT:
            return _render_strings(processor, messages, with_image, generation_prompt)
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
