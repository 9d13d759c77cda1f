"""Command-line options generated from config dataclasses, so each default lives in one place.

A config field declared with ``opt(default, help)`` is also a flag: ``--field-name`` (or the
flags given), with that default, that help and that type. ``@options(Config, ...)`` puts every
such field of each class into a typer command's signature and hands the command one built
instance per class, in place of its parameter annotated with that class:

    @app.command("answer")
    @c.command
    @options(AnswersConfig)
    def answer(input: c.Input, cfg: AnswersConfig) -> int: ...

``parse`` turns the flag's value into the field's (``--seeds 40,42`` into ``(40, 42)``, a prompt
file into a Prompt); ``flag_default`` is what the flag shows when the field's own default is not
a flag value (a built-in prompt: no file). Pure Python: ``stmed --help`` imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

_KEY = "stmed.option"
MAX_PIXELS_HELP = ("Downscale each image to at most N pixels: bounds the image tokens of dynamic-resolution "
                   "models (Qwen2-VL); recorded in outputs.")
_UNSET = object()


@dataclasses.dataclass(frozen=True)
class Option:
    help: str
    flags: tuple[str, ...] = ()  # default: --field-name (a switch: --name/--no-name)
    type: Any = None  # the flag's type where it differs from the field's
    parse: Callable[[Any], Any] | None = None
    flag_default: Any = _UNSET
    min: float | None = None
    max: float | None = None


def opt(default: Any = dataclasses.MISSING, help: str = "", *, flags: tuple[str, ...] | str = (), factory=None,
        type: Any = None, parse: Callable[[Any], Any] | None = None, flag_default: Any = _UNSET,
        min: float | None = None, max: float | None = None):
    """A dataclass field that is also a command-line option (see the module's docstring)."""
    option = Option(help, (flags,) if isinstance(flags, str) else tuple(flags), type, parse, flag_default, min, max)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={_KEY: option})
    return dataclasses.field(default=default, metadata={_KEY: option})


def ints(flag: str) -> Callable[[str], tuple[int, ...]]:
    """A parser for a comma-separated list of integers (``--seeds 40,42``)."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            from stmed.errors import InputError

            raise InputError(f"{flag} {text!r}: expected comma-separated integers, for example 40,42") from None

    return parse


def option_fields(cls) -> list[tuple[dataclasses.Field, Option, Any]]:
    """(field, its Option, the field's resolved type) for every option field of ``cls``."""
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata[_KEY], hints[f.name]) for f in dataclasses.fields(cls) if _KEY in f.metadata]


def _optional(tp):
    """``X | None`` as ``Optional[X]``, which typer reads on every version."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return Optional[args[0]]
    return tp


def flag_default(f: dataclasses.Field, option: Option):
    if option.flag_default is not _UNSET:
        return option.flag_default
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...  # required


def parameters(cls) -> list[inspect.Parameter]:
    """The typer parameters of ``cls``'s option fields."""
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=flag_default(f, option),
                              annotation=Annotated[_optional(option.type or tp), _typer_option(option)])
            for f, option, tp in option_fields(cls)]


def _typer_option(option: Option):
    import typer

    limits = {k: v for k, v in (("min", option.min), ("max", option.max)) if v is not None}
    # no flags given: typer's own, from the name (--pad-square/--no-pad-square for a switch)
    return typer.Option(*option.flags, help=option.help, **limits)


def flag_type(cls, name: str, *, default_none: bool = True):
    """``Annotated[type, typer.Option(...)]`` of one option field, for a command that declares it
    itself; ``default_none``: its type admits None (unset, so that a config file can decide)."""
    for f, option, tp in option_fields(cls):
        if f.name == name:
            tp = _optional(option.type or tp)
            if default_none and typing.get_origin(tp) is not typing.Union:
                tp = Optional[tp]
            return Annotated[tp, _typer_option(option)]
    raise KeyError(f"{cls.__name__} has no option field {name!r}")


def build(cls, values: dict[str, Any]):
    """An instance of ``cls`` from flag values (each through its ``parse``)."""
    kwargs = {}
    for f, option, _ in option_fields(cls):
        if f.name in values:
            value = values[f.name]
            kwargs[f.name] = option.parse(value) if option.parse is not None else value
    return cls(**kwargs)


def options(*classes) -> Callable:
    """Generate a command's options from config classes (see the module's docstring)."""

    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        slots = {name: hints[name] for name in sig.parameters if hints.get(name) in classes}
        assert len(slots) == len(classes), f"{fn.__name__} needs one parameter annotated with each of {classes}"
        own = [p for name, p in sig.parameters.items() if name not in slots]
        taken = set(sig.parameters)
        generated = []
        for cls in classes:
            for p in parameters(cls):
                assert p.name not in taken, f"{fn.__name__}: option {p.name} is declared twice"
                taken.add(p.name)
                generated.append(p)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for name, cls in slots.items():
                names = {f.name for f, _, _ in option_fields(cls)}
                kwargs[name] = build(cls, {k: kwargs.pop(k) for k in list(kwargs) if k in names})
            return fn(*args, **kwargs)

        params = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in own + generated]
        # parameters without a default first: a Python signature cannot put one after a default
        params.sort(key=lambda p: p.default is not inspect.Parameter.empty)
        wrapper.__signature__ = sig.replace(parameters=[_with_hint(p, hints) for p in params])
        wrapper.__stmed_options__ = classes  # which configs made its flags (tests/test_architecture.py)
        return wrapper

    return decorate


def _with_hint(p: inspect.Parameter, hints: dict) -> inspect.Parameter:
    """The command's own parameters keep their resolved annotations (typer reads the signature)."""
    return p.replace(annotation=hints[p.name]) if p.name in hints else p
