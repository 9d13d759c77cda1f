"""The STLLaVA-Med DPO format (``image``, ``chosen_conversations``, ``reject_conversations``),
written beside a pairs file by ``stmed judge --export stllava``."""

from __future__ import annotations

import json
from pathlib import Path

from stmed.records import write_json


def stllava_record(pair: dict) -> dict:
    """STLLaVA-Med's DPO format: the same human turn, then the chosen or the rejected answer."""
    human = {"from": "human", "value": "<image>\n" + pair["question"]}
    return {"id": pair["id"], "image": pair["image"],
            "chosen_conversations": [human, {"from": "gpt", "value": pair["chosen"]}],
            "reject_conversations": [human, {"from": "gpt", "value": pair["rejected"]}]}


def export_stllava(pairs_path: Path, out: Path) -> None:
    """The whole pairs file, converted (so it stays right across resumed runs); a JSON list, as their loader reads."""
    rows = [stllava_record(json.loads(line)) for line in pairs_path.read_text(encoding="utf-8").split("\n") if line.strip()]
    write_json(out, rows, indent=1)
