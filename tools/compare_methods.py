"""Preference methods side by side: each variant trained from the same pairs and seed, each model
(the base first) evaluated on the same benchmarks, one `stmed report` table.

    python tools/compare_methods.py PAIRS=runs/st/round-1/pairs.jsonl MODEL=llava-hf/llava-1.5-7b-hf
    python tools/compare_methods.py ... VARIANTS=dpo,weighted BENCH=vqa-rad --dry   # print the commands

`make compare` runs it. Variables: PAIRS (stmed judge output), HARD_PAIRS (hard-negative pairs from
`stmed judge --hard-negative corrupt`; adds the variant `hard-negatives`), MODEL, VARIANTS (comma
list, default every variant whose inputs are there), BENCH (comma list: vqa-rad, slake, pathvqa),
OUT, SEED, DPO_ARGS and EVAL_ARGS (extra flags for every `stmed dpo` / `stmed eval`, e.g.
DPO_ARGS="--max-steps 100"). A step whose output is there already is skipped and a stopped
training continues from its last checkpoint, so a stopped comparison resumes. The variants and the papers they come from: docs/training.md.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

# name -> the dpo flags that select it (docs/training.md, "Beyond the paper"); the paper's first
VARIANTS = {
    "dpo": [],  # STLLaVA-Med: sigmoid DPO, beta 0.1
    "dpo+sft": ["--loss", "sigmoid=1,sft=1"],  # RPO: DPO plus the chosen answer's NLL
    "ipo": ["--loss", "ipo"],
    "weighted": ["--weight", "margin"],  # each pair by the judge's margin (MMedPO's weighting, margin as the score)
    "image-pref": ["--image-pref", "1"],  # mDPO's image-conditional term
    "hard-negatives": [],  # plain DPO on the corrupted-image pairs (HARD_PAIRS)
}
DEFAULTS = {"PAIRS": "", "HARD_PAIRS": "", "MODEL": "", "VARIANTS": "", "BENCH": "vqa-rad,slake",
            "OUT": "runs/compare", "SEED": "42", "DPO_ARGS": "", "EVAL_ARGS": ""}


def plan(v: dict) -> list[tuple[Path | None, list[str]]]:
    """(the output that shows a step is done, its command) for every step, in order."""
    out = Path(v["OUT"])
    names = [n.strip() for n in v["VARIANTS"].split(",") if n.strip()] or [
        n for n in VARIANTS if n != "hard-negatives" or v["HARD_PAIRS"]]
    steps: list[tuple[Path | None, list[str]]] = []
    models = {"base": v["MODEL"]}
    for name in names:
        pairs = v["HARD_PAIRS"] if name == "hard-negatives" else v["PAIRS"]
        run = out / name / "dpo"
        steps.append((run / "merged" / "config.json",
                      ["stmed", "dpo", pairs, "-m", v["MODEL"], "-o", str(run), "--merge", "--resume",
                       "--seed", v["SEED"], *VARIANTS[name], *shlex.split(v["DPO_ARGS"])]))
        models[name] = str(run / "merged")
    summaries = []
    for bench in (b.strip() for b in v["BENCH"].split(",") if b.strip()):
        for name, model in models.items():
            summary = out / name / f"{bench}.json"
            summaries.append(str(summary))
            steps.append((summary, ["stmed", "eval", "--bench", bench, "-m", model, "--name", name,
                                    "-o", str(out / name / f"{bench}.jsonl"), "--summary", str(summary),
                                    *shlex.split(v["EVAL_ARGS"])]))
    steps.append((None, ["stmed", "report", *summaries, "--markdown", str(out / "report.md")]))
    return steps


def problems(v: dict) -> list[str]:
    """Inputs that are missing or wrong, one line each."""
    lines = []
    if not v["MODEL"]:
        lines.append("MODEL is not set (the base model: a Hugging Face id or a folder)")
    names = [n.strip() for n in v["VARIANTS"].split(",") if n.strip()]
    for name in names:
        if name not in VARIANTS:
            lines.append(f"VARIANTS: unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    if any(n != "hard-negatives" for n in names) or not names:
        if not Path(v["PAIRS"]).is_file():
            lines.append(f"PAIRS={v['PAIRS']}: no such file (stmed judge's pairs)")
    if "hard-negatives" in names and not Path(v["HARD_PAIRS"]).is_file():
        lines.append(f"HARD_PAIRS={v['HARD_PAIRS']}: no such file (stmed judge --hard-negative corrupt's pairs)")
    return lines


def main(argv: list[str]) -> int:
    v, dry = dict(DEFAULTS), False
    for arg in argv:
        if arg == "--dry":
            dry = True
        elif "=" in arg and arg.split("=", 1)[0] in DEFAULTS:
            k, val = arg.split("=", 1)
            v[k] = val.strip()
        else:
            print(f"compare: unknown argument {arg!r} (expected --dry or one of {', '.join(DEFAULTS)}=...)",
                  file=sys.stderr)
            return 2
    lacks = problems(v)
    for line in lacks:
        print(f"compare: {line}", file=sys.stderr)
    if lacks:
        return 2
    steps = plan(v)
    if dry:
        for _, cmd in steps:
            print(shlex.join(cmd))
        return 0
    for done, cmd in steps:
        if done is not None and done.exists():
            print(f"compare: {done} is there, skipping: {shlex.join(cmd)}", file=sys.stderr)
            continue
        print(f"compare: {shlex.join(cmd)}", file=sys.stderr)
        code = subprocess.run(cmd).returncode
        if code not in (0, 1):  # 1: finished, with bad records in the errors file
            print(f"compare: stopped: the step above exited {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
