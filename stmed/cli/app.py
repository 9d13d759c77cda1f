"""The typer app every command module registers on."""

import typer
from typer.core import TyperCommand


class Command(TyperCommand):
    """typer's command, with each argument listed by its metavar alone (``PAIRS``), as options
    are: typer would add the annotation's Python type (``<str>``, ``<list[Path]>``)."""

    def format_options(self, ctx, formatter) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and param.param_type_name == "argument" and param.metavar:
                args.append((param.metavar + ("..." if param.nargs != 1 else ""), record[1]))
            elif record is not None and param.param_type_name == "argument":
                args.append(record)
            elif record is not None:
                opts.append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class App(typer.Typer):
    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = App(
    name="stmed",
    help="Self-train medical vision-language models (STLLaVA-Med) and measure them.\n\n"
    "Stages read and write JSONL, so they pipe together: "
    "gen-questions | answer | judge > pairs.jsonl; dpo; eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
