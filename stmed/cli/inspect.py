"""inspect: a quick look at one medical image from the terminal."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from stmed.cli import common as c
from stmed.cli.app import app
from stmed.core.model import ModelSpec
from stmed.options import options
from stmed.stages.inspect import InspectConfig


@app.command("inspect")
@c.command
@options(InspectConfig, ModelSpec)
def inspect(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="An image file: JPEG, PNG, TIFF, BMP, WebP or DICOM.")],
    model: c.Model, cfg: InspectConfig, spec: ModelSpec,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a panel.")] = False,
) -> int:
    """Show an image's facts, the model's description, its own questions and its answers."""
    from stmed.images import load_image
    from stmed import registry
    from stmed.engines import EngineOptions, open_engine
    from stmed.stages.inspect import inspect_image

    _, info = load_image(image)  # a bad image fails here, before the model loads
    options = EngineOptions(engine=cfg.engine)
    registry.require(options.entry, "continues_as_user", "inspect (its self-asked questions)")
    result = inspect_image(open_engine(options, replace(spec, model=model)), image, info, cfg)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _show(result)
    return 0


def _show(result: dict) -> None:
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    facts = Table.grid(padding=(0, 2))
    for k, v in result["facts"].items():
        facts.add_row(Text(k, style="bold"), Text(", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)))
    qa = Table(show_header=True, header_style="bold", expand=True)
    qa.add_column("question", ratio=1)
    qa.add_column("answer", ratio=2)
    for item in result["qa"]:
        # Text, not markup strings: "[self]" and model text with brackets must print as written.
        qa.add_row(Text(("[self] " if item["self_asked"] else "") + item["question"]), Text(item["answer"]))
    body = Group(facts, Text(""), Text("description", style="bold"), Text(result["description"]), Text(""), qa)
    title = Text(f"{result['image']}  ·  {result['model']['model']}")
    Console(highlight=False).print(Panel(body, title=title, title_align="left"))
