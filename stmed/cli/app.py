"""The typer app every command module registers on, and what every command's help shares.

The app lists its commands in pipeline order, takes ``-h`` as ``--help`` and ``--version``,
ends each command's help with one example (EXAMPLES), and still reads the old spelling of a
renamed flag for one release (RENAMED), with a one-line note on stderr. Arguments show in help by
their metavar (``PAIRS``), as options do, without typer's Python type (``<list[Path]>``).
"""

from __future__ import annotations

import typer
import typer.core

from stmed import __version__
from stmed.errors import renamed

# The commands in the order a run uses them; a command missing here is listed after them.
ORDER = ("inspect", "gen-questions", "answer", "judge", "sft", "dpo", "eval", "report", "compare", "reproduce",
         "view", "convert")

# One example per command, ending its --help (tests/test_cli_help.py parses each with its command).
EXAMPLES = {
    "inspect": "stmed inspect scan.dcm -m llava-hf/llava-1.5-7b-hf --question 'Is there a fracture?'",
    "gen-questions": "stmed gen-questions images/ -m llava-hf/llava-1.5-7b-hf -n 5 -o questions.jsonl",
    "answer": "stmed answer questions.jsonl -m llava-hf/llava-1.5-7b-hf -n 2 --seeds 40,42 -o answers.jsonl",
    "judge": "stmed judge answers.jsonl --judge-model gpt-4o -o pairs.jsonl",
    "sft": "stmed sft conversations.json -m llava-hf/llava-1.5-7b-hf -o runs/sft",
    "dpo": "stmed dpo pairs.jsonl -m llava-hf/llava-1.5-7b-hf -o runs/dpo --merge",
    "eval": "stmed eval --bench vqa-rad -m runs/dpo/merged -o vqa-rad.jsonl --summary vqa-rad.json",
    "report": "stmed report runs/eval/base.json runs/eval/dpo.json --markdown report.md",
    "compare": "stmed compare examples/compare.yaml --dry-run",
    "reproduce": "stmed reproduce examples/reproduce.yaml --dry-run",
    "view": "stmed view pairs.jsonl -o pairs.html",
    "convert": "stmed convert models/stllava-med-7b -o models/stllava-med-7b-hf",
}

# (command, old flag) -> the flag that replaced it, or (that flag, {old value: new value});
# "*" matches every command. --json is the switch "JSON on stdout" wherever it remains.
RENAMED = {
    ("gen-questions", "--backend"): "--engine",
    ("answer", "--backend"): "--engine",
    ("eval", "--backend"): "--engine",
    ("inspect", "-q"): "--question",  # -q is --quiet everywhere else
    ("judge", "--json"): ("--response-format", {"on": "json", "off": "text"}),
    ("report", "--json"): "--json-out",
    ("convert", "--template"): "--chat-template",  # answer's --template is a prompt file
}


def rename_args(command: str, args: list[str]) -> list[str]:
    """``args`` with each old flag spelling of ``command`` replaced by its new one (noted once each)."""
    out, noted, values = [], set(), None  # values: the old flag's value map, for its value in the next arg
    for i, arg in enumerate(args):
        if arg == "--":
            out += args[i:]
            break
        if values is not None:
            out.append(values.get(arg, arg))
            values = None
            continue
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        new = RENAMED.get((command, flag)) or RENAMED.get(("*", flag))
        if new is None:
            out.append(arg)
            continue
        new, mapping = (new, {}) if isinstance(new, str) else new
        if flag not in noted:
            said = ", ".join(f"{a} is {b}" for a, b in mapping.items())
            renamed(f"stmed {command} {flag}", new + (f" ({said})" if said else ""))
            noted.add(flag)
        out.append(new + eq + mapping.get(value, value))
        values = mapping if mapping and not eq else None
    return out


class Command(typer.core.TyperCommand):
    """typer's command, each argument listed by its metavar alone (``PAIRS``) as options are:
    typer would add the annotation's Python type (``<str>``, ``<list[Path]>``)."""

    def format_options(self, ctx, formatter) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name != "argument":
                opts.append(record)
            else:
                args.append((param.metavar + ("..." if param.nargs != 1 else ""), record[1]) if param.metavar else record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class Group(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        known = [n for n in ORDER if n in self.commands]
        return known + [n for n in self.commands if n not in known]

    def get_command(self, ctx, name: str):
        command = super().get_command(ctx, name)
        if command is not None and name in EXAMPLES and not command.epilog:
            command.epilog = f"Example:\n\n\b\n  {EXAMPLES[name]}"
        return command

    def resolve_command(self, ctx, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command, rename_args(name, rest)


def _version(value: bool) -> None:
    if value:
        print(f"stmed {__version__}")
        raise typer.Exit()


class App(typer.Typer):
    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", Command)  # every command's help lists its arguments as Command does
        return super().command(*args, **kwargs)


app = App(
    name="stmed",
    cls=Group,
    help="Self-train medical vision-language models (STLLaVA-Med) and measure them.\n\n"
    "Stages read and write JSONL, so they pipe together: "
    "gen-questions | answer | judge > pairs.jsonl; dpo; eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print stmed's version and exit.")) -> None:
    pass
