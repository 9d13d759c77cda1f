"""What a new user meets in --help: -h, --version, commands in pipeline order, one example per
command that its own parser accepts, and old flag spellings that still work with a note."""

from __future__ import annotations

import shlex

import pytest
import typer
from typer.testing import CliRunner

from conftest import run_stmed
from stmed import __version__, registry
from stmed.cli import app
from stmed.cli.app import EXAMPLES, ORDER, rename_args

GROUP = typer.main.get_command(app)


def test_h_is_help_and_version_prints_it():
    runner = CliRunner()
    short, long = runner.invoke(app, ["-h"]), runner.invoke(app, ["--help"])
    assert short.exit_code == 0 and short.output == long.output
    assert runner.invoke(app, ["answer", "-h"]).exit_code == 0
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"stmed {__version__}"


def test_commands_are_listed_in_pipeline_order():
    listed = GROUP.list_commands(None)
    assert set(listed) == set(GROUP.commands)
    known = [n for n in ORDER if n in GROUP.commands]
    assert listed[:len(known)] == known
    assert listed.index("gen-questions") < listed.index("answer") < listed.index("judge") < listed.index("dpo") \
        < listed.index("eval"), listed


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_is_accepted_by_its_command(name):
    """The example ending a command's help parses with that command's own flags and arguments."""
    if name not in GROUP.commands:
        pytest.fail(f"EXAMPLES names {name!r}, which is not a command")
    argv = shlex.split(EXAMPLES[name])
    assert argv[:2] == ["stmed", name], EXAMPLES[name]
    command = GROUP.get_command(None, name)
    command.make_context(name, argv[2:])  # raises click's UsageError on an unknown flag or a bad value
    help_text = CliRunner().invoke(app, [name, "--help"]).output
    assert help_text.rstrip().endswith(EXAMPLES[name]), f"{name} --help does not end with its example"


def test_every_command_has_an_example():
    assert set(GROUP.commands) <= set(EXAMPLES), sorted(set(GROUP.commands) - set(EXAMPLES))


def test_old_flag_spellings_are_rewritten_with_one_note(capsys):
    assert rename_args("answer", ["q.jsonl", "--backend", "openai", "--backend=vllm", "--", "--backend"]) == \
        ["q.jsonl", "--engine", "openai", "--engine=vllm", "--", "--backend"]
    assert capsys.readouterr().err.count("note: stmed answer --backend is now --engine") == 1
    assert rename_args("judge", ["a.jsonl", "--backend", "openai"]) == ["a.jsonl", "--backend", "openai"]
    assert rename_args("inspect", ["x.png", "-q", "why?"]) == ["x.png", "--question", "why?"]


def test_judge_backend_hf_is_read_as_local_with_a_note(capsys):
    assert registry.lookup("hf", registry.JUDGE) is registry.lookup("local", registry.JUDGE)
    assert "--backend hf is now --backend local" in capsys.readouterr().err


def test_old_backend_flag_still_picks_the_engine(tmp_path):
    inp = tmp_path / "q.jsonl"
    inp.write_text('{"id": "a", "image": "x.png"}\n')
    r = run_stmed("gen-questions", inp, "-m", "served", "--backend", "openai", "-o", tmp_path / "out.jsonl")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 2, r.stderr
    assert "--backend is now --engine" in lines[0]
    assert "--strategy vuser needs raw prompt continuation, which --engine openai cannot do" in lines[1]
