"""Flags generated from config fields (stmed.options): ``--config FILE`` under the flags on every
command, old spellings that still work with a note, and help that shows files as FILE or DIR."""

import json
import re
from dataclasses import asdict

import pytest
import typer
from typer.testing import CliRunner

from stmed.cli import app
from stmed.options import options
from stmed.stages.judge import JudgeConfig
from stmed.train.config import DPOConfig, SFTConfig


def _shows(cls):
    """A one-command app printing the config its flags (and --config) build."""
    from stmed.cli import common as c

    show = typer.Typer()

    @show.command()
    @c.command
    @options(cls)
    def main(cfg: cls) -> int:
        print(json.dumps(asdict(cfg), default=str))
        return 0

    return show


def _run(cls, *args):
    r = CliRunner().invoke(_shows(cls), [str(a) for a in args])
    return r.exit_code, (json.loads(r.stdout.splitlines()[-1]) if r.exit_code == 0 else None), r.output


def test_the_file_overrides_the_defaults_and_the_flags_override_the_file(tmp_path):
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text("lr: 1.0e-5\nlora-r: 8\nweight_decay: 0.1\nloss: sigmoid=0.8,sft=0.2\nfull: true\n")
    code, got, out = _run(DPOConfig, "--config", cfg, "--lora-r", "16")
    assert code == 0, out
    assert got["learning_rate"] == 1e-5 and got["weight_decay"] == 0.1 and got["full"] is True, got
    assert got["lora_r"] == 16, "a flag given on the command line beats the file"
    assert got["loss"] == ["sigmoid", "sft"] and got["loss_weights"] == [0.8, 0.2], got
    assert got["beta"] == 0.1 and got["grad_accum"] == 16, "what neither sets keeps the dataclass default"
    # a flag given at its default value still beats the file: what counts is that it was given
    code, got, _ = _run(DPOConfig, "--config", cfg, "--lr", "5e-6", "--no-share-prefix")
    assert got["learning_rate"] == 5e-6 and got["share_prefix"] is False, got


def test_sft_and_dpo_keep_their_own_defaults_under_one_flag():
    assert DPOConfig().learning_rate == 5e-6 and SFTConfig().learning_rate == 2e-4
    helps = {name: CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output for name in ("dpo", "sft")}
    for name, lr, epochs, batch, accum in (("dpo", "5e-06", "1.0", "4", "16"), ("sft", "0.0002", "3.0", "8", "4")):
        text = " ".join(helps[name].split())
        assert f"--lr <float> Learning rate. [default: {lr}]" in text, text
        assert f"--epochs <float> Epochs. [default: {epochs}]" in text, text
        assert re.search(rf"--batch-size <int range> .*?\[default: {batch}; x>=1\]", text), text
        assert re.search(rf"--grad-accum <int range> .*?\[default: {accum}; x>=1\]", text), text
        assert "DPO 5e-6" not in text and "SFT 2e-4" not in text, "help restates no default"


@pytest.mark.parametrize("text, message", [
    ("beta: 0.2\nlearnig_rate: 1e-5\n", ":2: unknown key 'learnig_rate' (did you mean 'learning_rate'?)"),
    ("lora_r: many\n", ":1: lora_r: Input should be a valid integer"),
    ("batch-size: 0\n", ":1: batch-size: Input should be greater than or equal to 1"),
    ("loss: [sigmoid, sft]\n", ":1: loss: expected one value, as on the command line, not a list"),
    ("lr: [\n", ":2: not valid YAML"),
    ("- lr\n", ": expected a mapping of option names to values"),
])
def test_a_bad_config_file_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, _, out = _run(DPOConfig, "--config", cfg)
    assert code == 2 and out.startswith(f"stmed: error: {cfg}{message}") and out.count("\n") == 1, out
    code, _, out = _run(DPOConfig, "--config", tmp_path / "none.yaml")
    assert code == 2 and "--config" in out and "no such file" in out, out


def test_every_command_built_from_configs_takes_config():
    click_app = typer.main.get_command(app)
    built = [info.name for info in app.registered_commands if getattr(info.callback, "__stmed_options__", None)]
    assert {"gen-questions", "answer", "judge", "eval", "inspect", "dpo", "sft", "convert"} <= set(built), built
    for name in built:
        flags = {o for p in click_app.commands[name].params for o in p.opts}
        assert "--config" in flags, f"{name} has no --config"


def test_a_config_file_sets_a_command_own_option_too(tmp_path):
    """The file reaches every option of the command, not only config fields (here its own --limit)."""
    from stmed.stages.answers import AnswersConfig
    from stmed.cli import common as c

    show = typer.Typer()

    @show.command()
    @c.command
    @options(AnswersConfig)
    def main(cfg: AnswersConfig, limit: c.Limit = None) -> int:
        print(json.dumps({"n": cfg.n, "seeds": cfg.seeds, "limit": limit}))
        return 0

    cfg = tmp_path / "a.yaml"
    cfg.write_text("n: 3\nseeds: 1,2,3\nlimit: 5\n")
    r = CliRunner().invoke(show, ["--config", str(cfg)])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"n": 3, "seeds": [1, 2, 3], "limit": 5}, r.output
    cfg.write_text("seeds: 7\n")  # YAML reads a number; the flag takes text
    r = CliRunner().invoke(show, ["--config", str(cfg), "--limit", "2"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"n": 2, "seeds": [7], "limit": 2}, r.output


def test_the_old_json_spellings_still_work_with_a_note(capsys):
    """--json is the switch "JSON on stdout"; judge's auto|on|off and report's FILE were renamed."""
    from stmed.cli.app import rename_args

    assert rename_args("judge", ["a.jsonl", "--json", "on", "--json=off", "-o", "on"]) == \
        ["a.jsonl", "--response-format", "json", "--response-format=text", "-o", "on"]
    assert rename_args("judge", ["a.jsonl", "--json", "auto"]) == ["a.jsonl", "--response-format", "auto"]
    err = capsys.readouterr().err
    assert err.count("stmed: note: stmed judge --json is now --response-format (on is json, off is text)") == 2, err
    assert rename_args("report", ["s.json", "--json", "-"]) == ["s.json", "--json-out", "-"]
    assert rename_args("inspect", ["x.png", "--json"]) == ["x.png", "--json"], "the switch itself is not renamed"
    code, got, _ = _run(JudgeConfig, "--response-format", "text")
    assert code == 0 and got["response_format"] == "text"
    code, _, out = _run(JudgeConfig, "--response-format", "on")
    assert code == 2 and "--response-format 'on': expected auto, json or text" in out, out


def test_help_shows_files_and_folders_not_python_types():
    click_app = typer.main.get_command(app)
    for name in click_app.commands:
        text = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output
        leaks = re.findall(r"<(?:path|list\[[^>]*\]|Path|PosixPath)>", text)
        assert not leaks, f"stmed {name} --help shows {leaks}"
        for flag in ("--image-root", "--batch-dir"):
            if flag in text:
                assert re.search(rf"{flag} DIR\b", text), f"stmed {name}: {flag} is a folder"
        for flag in ("--errors", "--config", "--summary", "--collect") + (("--chat-template",) if name != "convert" else ()):
            if re.search(rf"^ +{flag}\b", text, re.M):
                assert re.search(rf"^ +{flag} FILE\b", text, re.M), f"stmed {name}: {flag} is a file"
