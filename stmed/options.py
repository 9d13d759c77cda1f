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
a flag value (a built-in prompt: no file). ``like`` declares a field again with another default
(a subclass's own value for a flag its base declares). A path shows as FILE (or the ``metavar``
given: DIR) in ``--help``.

Every such command also takes ``--config FILE.yaml``: keys are option names (``learning_rate``,
``learning-rate`` or the flag's own ``lr``), values as on the command line. The precedence is
defaults < the file < flags given on the command line (click's parameter source tells a flag
given from a default). Pure Python: ``stmed --help`` imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
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
    metavar: str | None = None  # default: FILE for a path, else typer's own


def opt(default: Any = dataclasses.MISSING, help: str = "", *, flags: tuple[str, ...] | str = (), factory=None,
        type: Any = None, parse: Callable[[Any], Any] | None = None, flag_default: Any = _UNSET,
        min: float | None = None, max: float | None = None, metavar: str | None = None):
    """A dataclass field that is also a command-line option (see the module's docstring)."""
    option = Option(help, (flags,) if isinstance(flags, str) else tuple(flags), type, parse, flag_default, min, max,
                    metavar)
    return _field(option, default, factory)


def like(cls, name: str, default: Any = _UNSET, **changes):
    """``cls``'s option field ``name`` declared again, with another default and any Option
    attribute changed (``help=...``): one flag, its help written once, with a second default."""
    f = cls.__dataclass_fields__[name]
    option = dataclasses.replace(f.metadata[_KEY], **changes)
    if default is not _UNSET:
        return _field(option, default, None)
    return _field(option, f.default, None if f.default_factory is dataclasses.MISSING else f.default_factory)


def _field(option: Option, default, factory):
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
    out = []
    for f, option, tp in option_fields(cls):
        tp = _optional(option.type or tp)
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=flag_default(f, option),
                                     annotation=Annotated[tp, _typer_option(option, tp)]))
    return out


def is_path(tp) -> bool:
    """A Path, an optional Path or a list of them: a flag that shows as FILE."""
    args = typing.get_args(tp)
    return tp is Path or any(is_path(a) for a in args if a is not type(None))


def _metavar(tp) -> str | None:
    """FILE for a path, TEXT or N for a list of them (typer would show ``<list[str]>``), else typer's own."""
    if is_path(tp):
        return "FILE"
    lists = [a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is list]
    if lists:
        return "N" if typing.get_args(lists[0]) in ((int,), (float,)) else "TEXT"
    return None


def _typer_option(option: Option, tp=None):
    import typer

    limits = {k: v for k, v in (("min", option.min), ("max", option.max)) if v is not None}
    metavar = option.metavar or _metavar(tp)
    # no flags given: typer's own, from the name (--pad-square/--no-pad-square for a switch)
    return typer.Option(*option.flags, help=option.help, metavar=metavar, **limits)


def flag_type(cls, name: str, *, default_none: bool = True):
    """``Annotated[type, typer.Option(...)]`` of one option field, for a command that declares it
    itself; ``default_none``: its type admits None (the flag may be left unset)."""
    for f, option, tp in option_fields(cls):
        if f.name == name:
            tp = _optional(option.type or tp)
            if default_none and typing.get_origin(tp) is not typing.Union:
                tp = Optional[tp]
            return Annotated[tp, _typer_option(option, tp)]
    raise KeyError(f"{cls.__name__} has no option field {name!r}")


def build(cls, values: dict[str, Any]):
    """An instance of ``cls`` from flag values (each through its ``parse``)."""
    kwargs = {}
    for f, option, _ in option_fields(cls):
        if f.name in values:
            value = values[f.name]
            kwargs[f.name] = option.parse(value) if option.parse is not None else value
    return cls(**kwargs)


CONFIG_HELP = "YAML file of options (keys: option names); the flags given here override it."
_CTX = "stmed_context"


def options(*classes) -> Callable:
    """Generate a command's options from config classes (see the module's docstring)."""
    import typer

    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        slots = {name: hints[name] for name in sig.parameters if hints.get(name) in classes}
        assert len(slots) == len(classes), f"{fn.__name__} needs one parameter annotated with each of {classes}"
        own = [p for name, p in sig.parameters.items() if name not in slots]
        taken = set(sig.parameters) | {"config"}
        generated = []
        for cls in classes:
            for p in parameters(cls):
                assert p.name not in taken, f"{fn.__name__}: option {p.name} is declared twice"
                taken.add(p.name)
                generated.append(p)
        config = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[Path], typer.Option("--config", metavar="FILE", help=CONFIG_HELP)])
        context = inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            ctx, config_file = kwargs.pop(_CTX), kwargs.pop("config")
            if config_file is not None:
                kwargs.update(config_values(config_file, ctx, {name for name in kwargs if _given(ctx, name)}))
            for name, cls in slots.items():
                names = {f.name for f, _, _ in option_fields(cls)}
                kwargs[name] = build(cls, {k: kwargs.pop(k) for k in list(kwargs) if k in names})
            return fn(*args, **kwargs)

        params = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in own + generated + [config]]
        # parameters without a default first: a Python signature cannot put one after a default
        params.sort(key=lambda p: p.default is not inspect.Parameter.empty)
        params.insert(0, context.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD))
        wrapper.__signature__ = sig.replace(parameters=[_with_hint(p, hints) for p in params])
        wrapper.__stmed_options__ = classes  # which configs made its flags (tests/test_architecture.py)
        return wrapper

    return decorate


def _with_hint(p: inspect.Parameter, hints: dict) -> inspect.Parameter:
    """The command's own parameters keep their resolved annotations (typer reads the signature)."""
    return p.replace(annotation=hints[p.name]) if p.name in hints else p


def _given(ctx, name: str) -> bool:
    """Whether the user set ``name`` (on the command line or through the environment), not its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def _params(ctx) -> dict:
    """The options a config file may set: every visible option of the command but --config."""
    return {p.name: p for p in ctx.command.params
            if p.param_type_name == "option" and not getattr(p, "hidden", False) and p.name != "config"}


def read_yaml(path: Path, missing: str):
    """(the data of the YAML file at ``path``, its node tree: where each key's line is); a missing
    file is the InputError ``missing``, a file that does not parse one line naming file:line."""
    import yaml

    from stmed.errors import InputError

    if not path.is_file():
        raise InputError(missing)
    text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise InputError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or 'cannot parse'})") from None


def config_values(path: Path, ctx, given: set[str]) -> dict[str, Any]:
    """What ``--config FILE`` sets: each key's value, converted as its flag's, for the options
    not ``given`` on the command line. A bad file, key or value is one InputError line."""
    from stmed.errors import InputError, did_you_mean

    loaded, root = read_yaml(path, f"--config {path}: no such file")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: expected a mapping of option names to values, for example `lr: 1.0e-5`")
    lines = {str(k.value): k.start_mark.line + 1 for k, _ in root.value}
    params = _params(ctx)
    names = {}  # every accepted spelling -> the option: its name, and each long flag's
    for p in params.values():
        names[p.name] = p.name
        names.update({o[2:].replace("-", "_"): p.name for o in p.opts if o.startswith("--")})
    values = {}
    for key, value in loaded.items():
        where = f"{path}:{lines.get(str(key), 1)}"
        name = names.get(str(key).replace("-", "_"))
        if name is None:
            raise InputError(f"{where}: unknown key {key!r}{did_you_mean(str(key).replace('-', '_'), params)}")
        if name not in given:
            values[name] = _convert(ctx, params[name], value, f"{where}: {key}")
    return values


def _convert(ctx, param, value, where: str):
    """``value`` as the flag's own value would be converted (typer's types, ranges, switches)."""
    from stmed.errors import InputError

    multiple = getattr(param, "multiple", False)
    if multiple and not isinstance(value, list):
        value = [value]
    if isinstance(value, dict) or (isinstance(value, list) and not multiple):
        raise InputError(f"{where}: expected one value, as on the command line, not a {type(value).__name__}")
    try:
        return param.process_value(ctx, value)
    except Exception as e:
        if not hasattr(e, "format_message"):  # not a click usage error: a bug, shown as one
            raise
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:  # YAML reads `seeds: 42` as a number; the flag takes the text
                return param.process_value(ctx, str(value))
            except Exception as again:
                if not hasattr(again, "format_message"):
                    raise
        message = " ".join(e.format_message().split())
        if message.startswith("Invalid value for"):  # the flag's name: the key says it
            message = message.split(": ", 1)[-1]
        raise InputError(f"{where}: {message}") from None
