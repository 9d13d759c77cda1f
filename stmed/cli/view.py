"""view: one self-contained HTML page to read generated data, eval items and training curves."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app

Opt = typer.Option


@app.command("view")
@c.command
def view(
    files: Annotated[list[str], typer.Argument(metavar="FILE", help="JSONL from any stage (questions, answers, pairs, skipped, "
                                               "*.errors.jsonl, eval output), train_log.jsonl or a dpo/sft folder; "
                                               "records with the same id are joined.")],
    output: Annotated[Optional[str], Opt("-o", "--output", metavar="FILE", help="The HTML page to write (default stdout).")] = None,
    image_root: c.ImageRoot = None,
    thumb_size: Annotated[int, Opt("--thumb-size", help="Longest side of each image thumbnail, in pixels.")] = 256,
    per_page: Annotated[int, Opt("--per-page", help="Cards on screen at once (the page has a pager).")] = 20,
    title: Annotated[Optional[str], Opt("--title", help="Page title (default: the input names).")] = None,
    show_paths: Annotated[bool, Opt("--show-paths", help="Show this machine's absolute paths (default: names only).")] = False,
    quiet: c.Quiet = False,
) -> int:
    """Write one HTML page showing every record as cards (image, questions, answers, judge
    verdicts, skips, failures, eval marks) with search and filters, and training curves."""
    from stmed.records import STDIO
    from stmed.view import ViewConfig, build_page, write_page

    if output in (None, STDIO) and sys.stdout.isatty():
        c.fail("the page is HTML: give -o FILE.html (or redirect stdout)")
    cfg = ViewConfig(files, image_root=image_root, thumb_side=thumb_size, per_page=per_page, keep_paths=show_paths,
                     title=title, quiet=quiet)
    page, totals = build_page(cfg)
    for name in totals["empty_inputs"] if not quiet else []:
        print(f"stmed view: {name}: no records (shown as empty)", file=sys.stderr)
    if output in (None, STDIO):
        sys.stdout.write(page)
    else:
        write_page(Path(output), page)
        if not quiet:
            print(f"stmed view: wrote {output} ({len(page.encode('utf-8')) / 1e6:.1f} MB)", file=sys.stderr)
    return 0
