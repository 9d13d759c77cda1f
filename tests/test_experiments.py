"""stmed compare and stmed reproduce: the YAML declaration, the plan, skipping what is done, the
warning on a training that barely trained, --dry-run, and one comparison end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE_IMAGES, ROOT, run_stmed
from stmed.cli import app
from stmed.errors import InputError
from stmed.experiments import compare
from stmed.experiments.common import Bench, Step, run_steps, settings_flags
from stmed.experiments.declare import load
from stmed.train.variants import HARD_NEGATIVES, VARIANTS


def _known():
    from stmed.cli.experiments import _known

    return _known("dpo", "eval")


def _pairs(path: Path, n: int = 4) -> Path:
    images = sorted(EXAMPLE_IMAGES.glob("*.jpg"))
    path.write_text("".join(json.dumps({"id": f"p{i}", "image": str(images[i % len(images)]),
                                        "question": "What organ is shown?", "chosen": "The liver, with a lesion.",
                                        "rejected": "No" + "." * (i + 1), "margin": i + 1}) + "\n" for i in range(n)))
    return path


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_a_declaration_loads_typed_and_the_command_line_overrides_it(tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text("model: m\nvariants: [dpo, weighted]\nbenchmarks:\n  vqa-rad: {limit: 16}\n  slake: {}\n"
                        "seeds: 7\ndpo:\n  lr: 5e-3\n  epochs: 4\n")
    run = load(compare.CompareRun, run_file)
    assert (run.variants, run.seeds, run.benchmarks["vqa-rad"].limit, run.benchmarks["slake"].limit) == \
        (["dpo", "weighted"], [7], 16, None)
    assert run.dpo == {"lr": "5e-3", "epochs": 4} and run.where["dpo.epochs"] == f"{run_file}:9", run.where
    run = load(compare.CompareRun, run_file, {"output": "elsewhere", "benchmarks": {"vqa-rad": Bench()},
                                              "dpo": {"epochs": "2"}}, {"output": "--output"})
    assert run.output == "elsewhere" and run.where["output"] == "--output"
    assert list(run.benchmarks) == ["vqa-rad"] and run.benchmarks["vqa-rad"].limit == 16, \
        "a selection keeps its settings"
    assert run.dpo == {"lr": "5e-3", "epochs": "2"}, "a flag's setting is laid over the file's"


@pytest.mark.parametrize("text, message", [
    ("model: m\nvaraints: [dpo]\n", r"run.yaml:2: unknown key 'varaints' \(did you mean 'variants'\?\)"),
    ("benchmarks:\n  vqa-rad: {limt: 3}\n",
     r"run.yaml:2: unknown key 'benchmarks.vqa-rad.limt' \(did you mean 'limit'\?\)"),
    ("seeds: [1, two]\n", r"run.yaml:1: seeds: expected an integer, got \"two\""),
    ("limit: many\n", r"run.yaml:1: limit: expected an integer, got \"many\""),
    ("dpo: [lr]\n", r"run.yaml:1: dpo: expected a mapping of names to settings, got \[\"lr\"\]"),
    ("- a\n- b\n", r"run.yaml: expected a mapping of keys to values"),
    ("model: [unclosed\n", r"run.yaml:2: not valid YAML"),
])
def test_a_bad_declaration_names_the_file_line_and_key(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(InputError, match=message):
        load(compare.CompareRun, tmp_path / "run.yaml")


def test_the_plan_puts_each_variant_in_its_own_folder_and_never_doubles_one(tmp_path):
    out = tmp_path / "cmp"
    run = load(compare.CompareRun, None, {"model": "base-model", "pairs": "p.jsonl", "output": str(out),
                                          "variants": ["dpo", "weighted"]})
    steps = compare.plan(run, _known())
    assert [s.kind for s in steps] == ["train"] * 2 + ["eval"] * 6 + ["report"]
    dpo, weighted = steps[0], steps[1]
    assert dpo.argv[:5] == ["dpo", "p.jsonl", "-m", "base-model", "-o"] and dpo.folder == out / "dpo"
    assert dpo.argv[5] == str(out / "dpo") and "--weight" not in dpo.argv
    assert weighted.argv[weighted.argv.index("--weight") + 1] == "margin" and weighted.folder == out / "weighted"
    evals = {(s.name, s.argv[s.argv.index("--bench") + 1]): s for s in steps if s.kind == "eval"}
    assert evals["base", "vqa-rad"].argv[evals["base", "vqa-rad"].argv.index("-m") + 1] == "base-model"
    assert evals["dpo", "slake"].argv[evals["dpo", "slake"].argv.index("-m") + 1] == str(out / "dpo" / "merged")
    assert evals["weighted", "vqa-rad"].done == (out / "weighted" / "vqa-rad.json",)
    assert not any("dpo/dpo" in a for s in steps for a in s.argv), "no doubled folder"
    assert steps[-1].argv[-1] == str(out / "report.md") and len(steps[-1].argv) == 1 + 6 + 2


def test_default_variants_are_every_one_in_the_table_and_hard_negatives_train_on_their_pairs():
    run = load(compare.CompareRun, None, {"model": "m"})
    assert run.chosen() == list(VARIANTS) and run.pairs == "runs/demo/round-1/pairs.jsonl", "make demo's pairs"
    run = load(compare.CompareRun, None, {"model": "m", "hard_pairs": "hard.jsonl", "seeds": [1, 2]})
    trains = [s for s in compare.plan(run) if s.kind == "train"]
    assert [s.name for s in trains][-2:] == [f"{HARD_NEGATIVES}-seed1", f"{HARD_NEGATIVES}-seed2"]
    assert trains[-1].argv[1] == "hard.jsonl" and trains[0].argv[1] != "hard.jsonl"
    assert trains[0].argv[trains[0].argv.index("--seed") + 1] == "1"


def test_every_variant_is_made_of_stmed_dpo_options():
    known = _known()["dpo"]
    for name, settings in VARIANTS.items():
        flags = [a for a in settings_flags(settings, known) if a.startswith("--")]
        assert flags and all(f in known for f in flags) or name == "dpo", f"{name}: {flags} are not all dpo options"


@pytest.mark.parametrize("overrides, message", [
    ({"variants": ["dpo", "sharpen"]}, r"--variants: unknown variant 'sharpen'"),
    ({"variants": ["weigthed"]}, r"did you mean 'weighted'"),
    ({"benchmarks": {"vqa-rod": Bench()}}, r"--bench: unknown benchmark 'vqa-rod' \(did you mean 'vqa-rad'\?\)"),
    ({"dpo": {"lrr": "1"}}, r"--dpo: dpo.lrr: stmed dpo has no option --lrr \(did you mean 'lr'\?\)"),
    ({"dpo": {"output": "x"}}, r"dpo.output: the run sets it itself"),
    ({"eval": {"limit": 3}}, r"eval.limit: the run sets it itself"),
    ({"variants": ["weighted"], "dpo": {"weight": "none"}}, r"dpo.weight: the variant weighted sets it itself"),
])
def test_a_declaration_that_makes_no_sense_is_one_line(overrides, message):
    from stmed.experiments.common import bench_overrides

    run = load(compare.CompareRun, None, {"model": "m", **overrides},
               {"variants": "--variants", "benchmarks": "--bench", "dpo": "--dpo"})
    bench_overrides(run, None, None)
    with pytest.raises(InputError, match=message):
        compare.check(run, _known())


def test_a_rerun_skips_the_steps_whose_outputs_are_there(tmp_path, capfd):
    done = tmp_path / "done.json"
    done.write_text("{}")
    seen = []
    steps = [Step(["eval", "--bench", "no-such-bench"], (done,), "eval", "a"), Step(["--help"], (), "report")]
    assert run_steps(steps, after=seen.append) == 0
    out, err = capfd.readouterr()
    assert f"[1/2] {done} is there, skipping: stmed eval" in err and "Usage:" in out, (out, err)
    assert seen == steps, "each finished step, skipped or run, is handed on"
    assert run_steps([Step(["eval", "--bench", "no-such-bench"])]) == 2, "a failing step stops the run with its code"


def _log(folder: Path, losses: list[float]) -> Step:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"step": i + 1, "loss": x, "rewards/margins": 0.0} for i, x in enumerate(losses)]
    rows.append({"step": len(losses), "train_runtime": 1.0, "train_loss": sum(losses) / max(len(losses), 1)})
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Step(["dpo"], (), "train", folder.name, folder)


def test_a_training_that_barely_trained_is_warned_about(tmp_path):
    few = compare.training_warning(_log(tmp_path / "few", [0.6931]))
    assert few.startswith("warning: few trained 1 step (fewer than 5)"), few
    flat = compare.training_warning(_log(tmp_path / "flat", [0.693147] * 6 + [0.69312]))
    assert flat.startswith("warning: flat's loss stayed at 0.6931 over 7 steps"), flat
    assert compare.training_warning(_log(tmp_path / "ok", [0.6931, 0.65, 0.6, 0.58, 0.55])) is None
    assert compare.training_warning(Step(["dpo"], (), "train", "none", tmp_path / "none")) is None


def test_dry_run_prints_what_is_left_and_notes_missing_inputs(tmp_path):
    out, pairs = tmp_path / "cmp", _pairs(tmp_path / "pairs.jsonl")
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"model: m\npairs: {pairs}\nvariants: [dpo]\nbenchmarks: {{vqa-rad: {{limit: 4}}}}\n"
                        f"output: {out}\neval: {{max_new_tokens: 8, quiet: true}}\n")
    (out / "base").mkdir(parents=True)
    (out / "base" / "vqa-rad.json").write_text("{}")
    code, stdout, stderr = _invoke("compare", run_file, "--dry-run", "--variants", "dpo,ipo")
    lines = stdout.splitlines()
    assert code == 0 and not stderr, stderr
    assert [line.split()[:2] for line in lines] == [["stmed", "dpo"], ["stmed", "dpo"], ["#", "done:"],
                                                    ["stmed", "eval"], ["stmed", "eval"], ["stmed", "report"]], lines
    assert lines[1].endswith("--loss ipo") and "--limit 4 -m m --name base" in lines[2]
    assert lines[3].endswith("--max-new-tokens 8 --quiet"), lines[3]
    assert not out.joinpath("dpo").exists(), "a dry run writes nothing"
    code, _, stderr = _invoke("compare", run_file, "--dry-run", "--pairs", tmp_path / "none.jsonl")
    assert code == 0 and "compare: missing: --pairs: " in stderr, stderr
    code, stdout, stderr = _invoke("compare", run_file, "--pairs", tmp_path / "none.jsonl")
    assert code == 2 and not stdout and stderr.startswith("stmed: error: --pairs: "), stderr
    run_file.write_text("model: m\nvariants: [dpo]\nbench: [slake]\n")
    code, _, stderr = _invoke("compare", run_file, "--dry-run")
    assert code == 2 and f"{run_file}:3: unknown key 'bench' (did you mean 'benchmarks'?)" in stderr, stderr


def test_reproduce_dry_run_prints_the_steps_beside_the_papers_numbers(tmp_path):
    args = ["reproduce", ROOT / "examples" / "reproduce.yaml", "--dry-run", "--release", tmp_path / "none",
            "--vision-tower", tmp_path / "clip", "-o", tmp_path / "out"]
    code, stdout, stderr = _invoke(*args)
    assert code == 0 and "missing: --release: " in stderr and "missing: --vision-tower: " in stderr, stderr
    assert "slake open 46.69 / closed 57.69" in stderr and "pathvqa open 11.92 / closed 52.90" in stderr
    lines = stdout.splitlines()
    convert = f"stmed convert {tmp_path}/none -o {tmp_path}/out/stllava-med-7b-hf --vision-tower {tmp_path}/clip"
    assert lines[0] == convert, lines
    assert [x.split()[3] for x in lines[1:4]] == ["vqa-rad", "slake", "pathvqa"] and lines[4].startswith("stmed report")
    for folder in ("none", "clip"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text("{}")
    (tmp_path / "pathvqa").mkdir()
    code, stdout, stderr = _invoke(*args, "--data", f"pathvqa={tmp_path}/pathvqa", "--limit", "8")
    assert code == 0 and "missing:" not in stderr, stderr
    assert f"--bench pathvqa --data {tmp_path}/pathvqa --limit 8 -m" in stdout.splitlines()[3], stdout
    code, _, stderr = _invoke(*args, "--data", "path-vqa=x")
    assert code == 2 and "'path-vqa' is not among the benchmarks" in stderr and "did you mean 'pathvqa'" in stderr


@pytest.mark.slow
def test_compare_end_to_end_trains_evaluates_reports_and_a_rerun_skips_it_all(tiny_model, tmp_path):
    pairs, out = _pairs(tmp_path / "pairs.jsonl"), tmp_path / "cmp"
    args = ["compare", "-m", tiny_model, "--pairs", pairs, "--variants", "dpo,weighted", "--bench", "vqa-rad",
            "--limit", "4", "-o", out, "--dpo", "max_steps=1", "--dpo", "batch_size=2", "--dpo", "grad_accum=1",
            "--dpo", "lora_r=4", "--dpo", "lora_alpha=8", "--dpo", "quiet=true", "--eval", "max_new_tokens=4",
            "--eval", "bootstrap=0", "--eval", "device=cpu", "--eval", "quiet=true"]
    r = run_stmed(*args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert report.splitlines()[0].split("|")[3:6] == [" base ", " dpo ", " weighted "], report
    meta = json.loads((out / "weighted" / "_meta.json").read_text())["config"]
    assert (meta["weight"], meta["seed"], meta["max_steps"]) == ("margin", 42, 1), meta
    assert (out / "weighted" / "vqa-rad.json").is_file() and (out / "base" / "vqa-rad.json").is_file()
    assert r.stderr.count("trained 1 step (fewer than 5)") == 2, r.stderr[-3000:]
    resolved = json.loads((out / "compare.json").read_text())
    assert resolved["variants"] == ["dpo", "weighted"] and resolved["dpo"]["max_steps"] == "1", resolved
    again = run_stmed(*args, timeout=600)
    assert again.returncode == 0 and again.stderr.count("is there, skipping") == 5, again.stderr[-2000:]
