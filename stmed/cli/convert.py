"""convert: an original-layout LLaVA checkpoint (LLaVA-1.5, LLaVA-Med v1.5, STLLaVA-Med) to the
llava-hf folder every other command loads."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from stmed.cli import common as c
from stmed.cli.app import app
from stmed.convert import ConvertOptions
from stmed.options import options

@app.command("convert")
@c.command
@options(ConvertOptions)
def convert(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Checkpoint folder in the original LLaVA code's layout "
                                              "(model_type llava_llama or llava_mistral).")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="DIR", help="Folder to write the converted model to.")],
    opts: ConvertOptions,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a folder that is not empty.")] = False,
) -> int:
    """Convert LLaVA-1.5, LLaVA-Med v1.5 or STLLaVA-Med (cluster projector, LoRA) weights for stmed."""
    from stmed.convert import convert as run
    from stmed.errors import InputError

    if output.exists() and any(output.iterdir()) and not overwrite:
        raise InputError(f"-o {output}: the folder is not empty; pass --overwrite to write into it")
    done = run(src, output, opts)
    print(f"stmed: converted {src} ({done['source_model_type']}, {done['projector']} projector, "
          f"{done['template']} template) to {output}", file=sys.stderr)
    print(json.dumps(done))
    return 0
