"""``--dry-run``: the first training example shown as the model will see it."""

from __future__ import annotations

import json
import sys


def _runs(tokens: list[str]) -> str:
    """Tokens joined with '|', a run of one repeated token (image tokens) as ``<image>x576``."""
    out, i = [], 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] == tokens[i]:
            j += 1
        out.append(tokens[i] if j - i < 4 else f"{tokens[i]}x{j - i}")
        i = j
    return "|".join(out)


def show_example(example: dict, as_json: bool) -> None:
    """On stdout: the JSON object (``--json``), or the tokens for a person to read."""
    if as_json:
        print(json.dumps(example, ensure_ascii=False))
        return
    if example.get("rendering"):
        print(f"rendering: {example['rendering']}")
    if "segments" in example:  # sft: supervised segments marked
        for seg in example["segments"]:
            mark = "TRAIN" if seg["supervised"] else "     "
            print(f"{mark} {_runs(seg['tokens'])}")
    else:
        for name in ("prompt", "chosen", "rejected"):
            print(f"{name:>8}: {_runs(example[f'{name}_tokens'])}")
    sys.stdout.flush()
