"""Summaries to people: the table after one run, and several runs side by side (``stmed report``).

Runs are columns and headline metrics are rows, as in the papers' tables; each cell holds the
value (x100) and its bootstrap 95% CI, and a mark where it differs significantly from the first
run on the same benchmark (significance.py). Plotting needs matplotlib, which is optional.
"""

from __future__ import annotations

import json
from pathlib import Path

from stmed.errors import InputError
from stmed.evaluation.metrics import METRICS
from stmed.evaluation.significance import ALPHA

HEADLINE = [m.name for m in METRICS.values() if m.headline]
MARK = "*"
LABELS = {
    "open_recall": "open (recall)",
    "closed_accuracy": "closed (accuracy)",
    "open_f1": "open F1",
    "closed_strict": "closed strict",
    "open_judge": "open (judge)",
}


def load_summary(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such summary file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a JSON summary ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise InputError(f"{p}: not an stmed eval summary (no 'metrics'); pass the file from --summary")
    problem = _summary_problem(data)
    if problem:
        raise InputError(f"{p}: not an stmed eval summary ({problem})")
    data.setdefault("name", p.stem)
    return data


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _summary_problem(data: dict) -> str | None:
    """What in a summary's shape the tables cannot show (a hand-edited or another tool's file), or None."""
    for key in ("benchmark", "run"):
        if not isinstance(data.get(key, {}), dict):
            return f"{key!r} must be an object"
    for key in ("bench", "lang"):
        if not isinstance(data.get("benchmark", {}).get(key, ""), (str, type(None))):
            return f"'benchmark.{key}' must be a string"
    if not isinstance(data.get("run", {}).get("prompt", {}), dict):
        return "'run.prompt' must be an object"
    for name, entry in data["metrics"].items():
        if entry is None:
            continue
        if not isinstance(entry, dict):
            return f"'metrics.{name}' must be an object"
        if entry.get("value") is not None and not _number(entry["value"]):
            return f"'metrics.{name}.value' must be a number"
        ci = entry.get("ci95")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(map(_number, ci))):
            return f"'metrics.{name}.ci95' must be two numbers"
    return _per_item_problem(data.get("per_item"))


def _per_item_problem(per_item) -> str | None:
    if per_item is None:
        return None  # an older summary: shown, but not tested
    if not isinstance(per_item, dict):
        return "'per_item' must be an object"
    for kind, col in per_item.items():
        if not isinstance(col, dict) or not isinstance(col.get("ids"), list):
            return f"'per_item.{kind}' must be an object with a list of 'ids'"
        if not all(isinstance(i, str) for i in col["ids"]):
            return f"'per_item.{kind}.ids' must be strings"
        for name, values in col.items():
            if name == "ids":
                continue
            if not (isinstance(values, list) and len(values) == len(col["ids"])
                    and all(v is None or _number(v) for v in values)):
                return f"'per_item.{kind}.{name}' must be one number (or null) per id"
    return None


def cell(entry: dict | None, *, ci: bool = True) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    text = f"{entry['value']:.2f}"
    if ci and entry.get("ci95"):
        lo, hi = entry["ci95"]
        text += f" [{lo:.1f}, {hi:.1f}]"
    return text


def _bench(summary: dict) -> str:
    b = summary.get("benchmark", {})
    name = b.get("bench") or "?"
    return f"{name} ({b['lang']})" if b.get("lang") not in (None, "en") else name


def rows(summaries: list[dict], metrics: list[str] | None = None,
         tests: list[dict] = ()) -> list[tuple[str, str, list[str]]]:
    """(benchmark, metric label, one cell per run) for every benchmark the runs cover: the
    headline metrics, and an optional one (the open judge) where some run has it; a cell whose
    difference from its baseline is significant ends in MARK."""
    if metrics is None:
        metrics = HEADLINE + [m.name for m in METRICS.values()
                              if m.optional and any(m.name in s["metrics"] for s in summaries)]
    marked = {(t["column"], t["metric"]) for t in tests if t["significant"]}
    out = []
    for bench in dict.fromkeys(_bench(s) for s in summaries):
        for m in metrics:
            cells = [(cell(s["metrics"].get(m)) + (f" {MARK}" if (i, m) in marked else "")) if _bench(s) == bench else ""
                     for i, s in enumerate(summaries)]
            out.append((bench, LABELS.get(m, m), cells))
    return out


def legend(tests: list[dict], notes: list[str]) -> list[str]:
    """The lines under a comparison table: what the mark means, and what could not be compared."""
    lines = []
    if tests:
        lines.append(f"{MARK} differs from the first run on the same benchmark at p < {ALPHA} (paired over the "
                     "items both runs scored: bootstrap on open scores, McNemar exact on closed; uncorrected)")
    return lines + notes


def run_table(summary: dict):
    """The rich table printed on stderr after one ``stmed eval``."""
    from rich.table import Table

    c = summary.get("counts", {})
    title = (f"{summary.get('name')} on {_bench(summary)}: {c.get('total', 0)} items "
             f"({c.get('closed', 0)} closed + {c.get('open', 0)} open)")
    table = Table(title=title, title_justify="left")
    table.caption = "x100; each metric's rule is in the summary JSON"
    for col, justify in (("metric", "left"), ("value", "right"), ("95% CI", "right"), ("n", "right")):
        table.add_column(col, justify=justify)
    for name, entry in summary["metrics"].items():
        if entry.get("value") is None:
            continue
        lo_hi = entry.get("ci95")
        table.add_row(name, f"{entry['value']:.2f}", f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f}" if lo_hi else "-",
                      str(entry.get("n", "")), style="bold" if name in HEADLINE else None)
    return table


def compare_table(summaries: list[dict], tests: list[dict] = (), notes: list[str] = ()):
    from rich.table import Table

    table = Table(title="stmed report (x100, bootstrap 95% CI)", title_justify="left")
    table.add_column("benchmark")
    table.add_column("metric")
    for s in summaries:
        table.add_column(str(s["name"]), justify="right")
    for bench, label, cells in rows(summaries, tests=tests):
        table.add_row(bench, label, *cells)
    lines = legend(tests, notes)
    if lines:
        table.caption = "\n".join(lines)
        table.caption_justify = "left"
    return table


def markdown(summaries: list[dict], tests: list[dict] = (), notes: list[str] = ()) -> str:
    head = ["benchmark", "metric", *[str(s["name"]) for s in summaries]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench, label, cells in rows(summaries, tests=tests):
        lines.append("| " + " | ".join([bench, label, *cells]) + " |")
    lines.append("")
    lines.append("Values x100 with bootstrap 95% CIs. Open = mean token recall and closed = yes/no "
                 "substring accuracy, both with LLaVA-Med v1.0 normalisation; open F1 and strict closed "
                 "accuracy penalise long, hedging answers.")
    for line in legend(tests, notes):
        lines += ["", line]
    if tests:
        lines += ["", "| benchmark | metric | run | baseline | items | difference [95% CI] | p | test |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in tests:
            lines.append(f"| {t['benchmark']} | {LABELS.get(t['metric'], t['metric'])} | {t['run']} | {t['baseline']} "
                         f"| {t['n']} | {t['diff']:+.2f} [{t['ci95'][0]:+.1f}, {t['ci95'][1]:+.1f}] "
                         f"| {_p(t['p'])}{' ' + MARK if t['significant'] else ''} | {t['test']} |")
        lines.append("")
    for s in summaries:
        b = s.get("benchmark", {})
        run = s.get("run", {})
        lines.append(f"- **{s['name']}**: {b.get('bench')} {b.get('split')} ({b.get('format')}, sha256 "
                     f"{str(b.get('sha256', ''))[:12]}), model {run.get('model', '-')}, prompt "
                     f"{run.get('prompt', {}).get('name', '-')}, stmed {s.get('stmed_version', '?')}"
                     + ("" if s.get("complete", True) else " (incomplete run)"))
    return "\n".join(lines) + "\n"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def json_report(summaries: list[dict], tests: list[dict], notes: list[str], *, resamples: int, seed: int) -> str:
    """The machine-readable report: each run's headline metrics, every paired test with its p-value, the notes."""
    runs = [{"name": s["name"], "benchmark": s.get("benchmark", {}).get("bench"),
             "split": s.get("benchmark", {}).get("split"), "lang": s.get("benchmark", {}).get("lang"),
             "metrics": {m: s["metrics"].get(m) for m in HEADLINE if s["metrics"].get(m)}} for s in summaries]
    out = {"runs": runs, "comparisons": tests, "notes": notes,
           "significance": {"alpha": ALPHA, "bootstrap_resamples": resamples, "seed": seed,
                            "baseline": "the first run on the same benchmark, split and language"}}
    return json.dumps(out, indent=1, ensure_ascii=False) + "\n"


def plot(summaries: list[dict], path: str | Path) -> None:
    """Grouped bars: one group per (benchmark, headline metric), one bar per run, CIs as error bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed: pip install 'stmed[plot]'") from None
    groups = [(bench, m) for bench in dict.fromkeys(_bench(s) for s in summaries) for m in HEADLINE]
    width = 0.8 / max(1, len(summaries))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups)), 4))
    for k, s in enumerate(summaries):
        xs, ys, errs = [], [], [[], []]
        for g, (bench, m) in enumerate(groups):
            entry = s["metrics"].get(m) if _bench(s) == bench else None
            if not entry or entry.get("value") is None:
                continue
            v = entry["value"]
            lo, hi = entry.get("ci95") or (v, v)
            xs.append(g + k * width)
            ys.append(v)
            errs[0].append(max(0.0, v - lo))
            errs[1].append(max(0.0, hi - v))
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=str(s["name"]))
    ax.set_xticks([g + width * (len(summaries) - 1) / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{b}\n{LABELS.get(m, m)}" for b, m in groups], fontsize=8)
    ax.set_ylabel("score x100")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
