"""The typer app every command module registers on."""

import typer

app = typer.Typer(
    name="stmed",
    help="Self-train medical vision-language models (STLLaVA-Med) and measure them.\n\n"
    "Stages read and write JSONL, so they pipe together: "
    "gen-questions | answer | judge > pairs.jsonl; dpo; eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
