"""The paper's table (STLLaVA-Med 7B, zero-shot) as `stmed eval` runs on the converted release.

    python tools/reproduce_paper.py --dry                       # print the commands, check the inputs
    python tools/reproduce_paper.py STLLAVA=... CLIP=... OUT=runs/paper   # run them (a GPU)

`make reproduce-paper` runs it; without a GPU (or with DRY=1) it is dry. Inputs, as make variables:
STLLAVA (the ZachSun/stllava-med-7b folder, original layout), CLIP (openai/clip-vit-large-patch14-336,
its vision tower), MODEL_BASE (for a LoRA folder with non_lora_trainables.bin, as the release is:
liuhaotian/llava-v1.5-7b), VIT_LORA (ZachSun/stllava-med-7b-vit where it is a peft adapter), PATHVQA (a PathVQA
test file, or "hub" for the Hugging Face mirror), OUT. VQA-RAD and SLAKE are the copies in examples/data.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

# Sun et al. 2024, Table 1 (zero-shot; open = token recall, closed = accuracy, in %)
PAPER = {"vqa-rad": (37.12, 60.35), "slake": (46.69, 57.69), "pathvqa": (11.92, 52.90)}


def commands(v: dict) -> list[list[str]]:
    # the converted processor pads to square itself (image_aspect_ratio "pad"), as training did
    out, model = v["OUT"], f"{v['OUT']}/stllava-med-7b-hf"
    convert = ["stmed", "convert", v["STLLAVA"], "-o", model, "--vision-tower", v["CLIP"]]
    if v.get("MODEL_BASE"):
        convert += ["--model-base", v["MODEL_BASE"]]
    if v.get("VIT_LORA"):
        convert += ["--vision-lora", v["VIT_LORA"]]
    cmds = [convert]
    for bench in PAPER:
        data = [] if bench != "pathvqa" or v["PATHVQA"] == "hub" else ["--data", v["PATHVQA"]]
        cmds.append(["stmed", "eval", "--bench", bench, *data, "-m", model,
                     "-o", f"{out}/{bench}.jsonl", "--summary", f"{out}/{bench}.json"])
    cmds.append(["stmed", "report", *(f"{out}/{b}.json" for b in PAPER), "--markdown", f"{out}/report.md"])
    return cmds


def missing(v: dict) -> list[str]:
    """Inputs that are not there, one line each."""
    lacks = []
    src = Path(v["STLLAVA"])
    if not (src / "config.json").is_file():
        lacks.append(f"STLLAVA={src}: no config.json (download ZachSun/stllava-med-7b there)")
    if v.get("MODEL_BASE") is None and (src / "non_lora_trainables.bin").is_file():
        lacks.append(f"STLLAVA={src} is a LoRA folder: set MODEL_BASE to its base model")
    for name in ("MODEL_BASE", "VIT_LORA"):
        if v.get(name) and not Path(v[name]).is_dir():
            lacks.append(f"{name}={v[name]}: no such folder")
    if not (Path(v["CLIP"]) / "config.json").is_file():
        lacks.append(f"CLIP={v['CLIP']}: no config.json (download openai/clip-vit-large-patch14-336 there)")
    if v["PATHVQA"] != "hub" and not Path(v["PATHVQA"]).exists():
        lacks.append(f"PATHVQA={v['PATHVQA']}: no such file (or PATHVQA=hub)")
    return lacks


def main(argv: list[str]) -> int:
    v = {"STLLAVA": "models/stllava-med-7b", "CLIP": "models/clip-vit-large-patch14-336", "MODEL_BASE": None, "VIT_LORA": None,
         "PATHVQA": "hub", "OUT": "runs/paper"}
    dry = False
    for arg in argv:
        if arg == "--dry":
            dry = True
        elif "=" in arg:
            k, val = arg.split("=", 1)
            v[k] = val.strip() or v.get(k)
    print("paper (STLLaVA-Med 7B, zero-shot):  " + "  ".join(
        f"{b} open {o:.2f} / closed {c:.2f}" for b, (o, c) in PAPER.items()), file=sys.stderr)
    lacks = missing(v)
    for line in lacks:
        print(f"missing: {line}", file=sys.stderr)
    for cmd in commands(v):
        print(shlex.join(cmd))
    if dry:
        return 0
    if lacks:
        return 2
    for cmd in commands(v):
        subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
