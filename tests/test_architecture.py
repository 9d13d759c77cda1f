"""The shape of the code, checked: no import circles, no module importing a layer above its own,
every stage flag generated from its config field (one default, one help), one registry of
engines and judge backends."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types

import pytest
import typer

from conftest import ROOT
from stmed.cli import app
from stmed.errors import InputError
from stmed.options import build, flag_default, option_fields, options
from stmed.stages.answers import AnswersConfig

PACKAGE = ROOT / "stmed"


def _imports() -> dict[str, set[str]]:
    """stmed module -> the stmed modules it imports, at the top or inside a function."""
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in mods:
                graph[m] |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                             for a in node.names}
            elif isinstance(node, ast.Import):
                graph[m] |= {a.name for a in node.names if a.name in mods}
        graph[m].discard(m)
    return graph


def test_no_import_circles():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import circle: {' -> '.join(path[path.index(n):] + [n]) if n in path else n}"
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


# stmed's floors, top first: a module may import its own floor and those below, never one above
# (type-only imports included). A new top-level module or package takes its place here.
LAYERS = [
    ["stmed.cli"],
    ["stmed.experiments", "stmed.view", "stmed.train", "stmed.convert"],
    ["stmed.stages"],
    ["stmed.evaluation"],
    ["stmed.judge"],
    ["stmed.engines"],
    ["stmed.registry"],
    ["stmed.core"],
    ["stmed.api"],
    ["stmed.distributed", "stmed.images"],
    ["stmed.records", "stmed.corrupt", "stmed.prompts", "stmed.progress", "stmed.options", "stmed.paths"],
    ["stmed.errors"],
    ["stmed"],
]


def _floor(module: str) -> int:
    top = ".".join(module.split(".")[:2])
    floor = next((i for i, names in enumerate(LAYERS) if top in names), None)
    assert floor is not None, f"{top} is on no floor of LAYERS in tests/test_architecture.py: place it"
    return floor


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module on a floor above the importer's, as "a -> b"."""
    return [f"{m} -> {n}" for m in sorted(graph) for n in sorted(graph[m]) if _floor(n) < _floor(m)]


def test_no_module_imports_a_floor_above_its_own():
    assert upward_imports(_imports()) == [], "an import goes up a floor (see LAYERS)"


def test_the_floor_check_sees_an_upward_arrow():
    """The arrow judge -> stages (the judge's Outcome and record images, once) is what it must catch."""
    graph = {"stmed.judge.common": {"stmed.stages.runner", "stmed.records"}, "stmed.stages.runner": {"stmed.records"}}
    assert upward_imports(graph) == ["stmed.judge.common -> stmed.stages.runner"]


TOKEN_PATH = ("stmed.core.prompt", "stmed.core.chat", "stmed.core.tokens", "stmed.core.template")  # top to bottom


def test_prompt_rendering_runs_one_way():
    """Messages become prompt ids through stmed.core.prompt alone; below it each module of the
    chain imports only the ones under it, so no call goes back up."""
    graph = _imports()
    for m, deps in graph.items():
        inner = deps & set(TOKEN_PATH[1:])
        if m.startswith("stmed.core.") or not inner:
            continue
        raise AssertionError(f"{m} imports {sorted(inner)}: outside the core, render and encode through stmed.core.prompt")
    for k, m in enumerate(TOKEN_PATH):
        above = graph[m] & set(TOKEN_PATH[:k + 1]) - {m}
        assert not above, f"{m} imports {sorted(above)}, which sit above it on the token path"


def test_engines_live_in_one_package():
    from stmed import registry

    for entry in registry.ENTRIES.values():
        if entry.engine:
            assert entry.engine.startswith("stmed.engines."), f"engine {entry.name} lives outside stmed/engines/"
            assert hasattr(entry.load(registry.GENERATE), "from_options"), f"engine {entry.name} has no from_options"


def _commands():
    return {info.name: info.callback for info in app.registered_commands}


BUILT_FROM_CONFIGS = ["gen-questions", "answer", "judge", "eval", "inspect", "convert", "dpo", "sft"]


def test_every_command_that_takes_a_config_gets_its_flags_from_it():
    built = {name for name, cb in _commands().items() if getattr(cb, "__stmed_options__", None)}
    assert built >= set(BUILT_FROM_CONFIGS), f"commands whose flags are written by hand: {set(BUILT_FROM_CONFIGS) - built}"


def _runtime_type(tp):
    """The class a value of annotation ``tp`` is an instance of (None admitted by Optional)."""
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return _runtime_type(args[0])
    return typing.get_origin(tp) or tp


@pytest.mark.parametrize("name", BUILT_FROM_CONFIGS)
def test_every_stage_flag_is_its_config_field(name):
    """Each field's flag has the field's name and declared spelling, its help, and its default:
    the flag's default, converted as the command converts it, builds the config's own defaults."""
    callback = _commands()[name]
    click_cmd = typer.main.get_command(app).commands[name]
    ctx = click_cmd.make_context(name, [], resilient_parsing=True)
    params = {p.name: p for p in click_cmd.params}
    classes = callback.__stmed_options__
    assert classes, f"{name} generates no option from a config"
    for cls in classes:
        values = {}
        for f, option, tp in option_fields(cls):
            assert f.name in params, f"{name}: {cls.__name__}.{f.name} has no flag"
            p = params[f.name]
            spelled = [x for flag in option.flags for x in flag.split("/")] or [f"--{f.name.replace('_', '-')}"]
            assert set(spelled) <= set(p.opts + p.secondary_opts), \
                f"{name} {p.opts}: not {cls.__name__}.{f.name}'s flags {spelled}"
            assert p.help == option.help, f"{name} --{f.name}: help differs from {cls.__name__}.{f.name}'s"
            default = flag_default(f, option)
            assert p.default == default or (p.default in (None, ()) and default in (None, ())), \
                f"{name} --{f.name}: default {p.default!r} is not {cls.__name__}'s {default!r}"
            values[f.name] = p.process_value(ctx, p.default)  # the flag's own conversion (its type)
            if option.type is None and option.parse is None and values[f.name] is not None:
                assert isinstance(values[f.name], _runtime_type(tp)), \
                    f"{name} --{f.name}: the flag gives a {type(values[f.name]).__name__}, {cls.__name__}.{f.name} is {tp}"
        assert build(cls, values) == cls(), f"{name}: the defaults of {cls.__name__}'s flags make another config"


def test_a_command_cannot_declare_a_config_flag_twice():
    with pytest.raises(AssertionError, match="declared twice"):
        @options(AnswersConfig)
        def twice(cfg: AnswersConfig, n: int = 3):  # -n is AnswersConfig.n's
            return n


def test_registry_names_and_capabilities():
    from stmed import registry

    assert registry.lookup("hf").continues_as_user and registry.lookup("hf").logprobs
    assert not registry.lookup("openai").continues_as_user
    assert registry.names(registry.JUDGE) == ["openai", "batch", "local"], "judge --backend is the transport only"
    assert registry.lookup("vllm").continues_as_user and registry.lookup("vllm").logprobs
    with pytest.raises(InputError, match=r"--engine 'opnai': unknown \(did you mean 'openai'\?\)"):
        registry.lookup("opnai")
    with pytest.raises(InputError, match="--engine batch: a judge backend, not an engine; choose from hf, vllm, openai"):
        registry.lookup("batch")
    with pytest.raises(InputError, match="--backend vllm: an engine, not a judge backend .*--backend local --engine vllm"):
        registry.lookup("vllm", registry.JUDGE)
    with pytest.raises(InputError, match="--strategy vuser needs raw prompt continuation, which --engine openai"):
        registry.require(registry.lookup("openai"), "continues_as_user", "--strategy vuser")


def test_stage_help_imports_neither_torch_nor_transformers():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom stmed.cli import app\n"
            "for cmd in ('gen-questions', 'answer', 'judge', 'eval', 'dpo', 'sft', 'inspect', 'convert'):\n"
            "    assert CliRunner().invoke(app, [cmd, '--help']).exit_code == 0, cmd\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"], "--help must not import torch or transformers"


def test_unknown_backend_and_vuser_on_a_server_are_one_line_before_any_output(tmp_path, tiny_model):
    from conftest import run_stmed

    inp = tmp_path / "q.jsonl"
    inp.write_text('{"id": "a", "image": "x.png"}\n')
    out = tmp_path / "out.jsonl"
    r = run_stmed("gen-questions", inp, "-m", "served", "--engine", "openai", "-o", out)
    assert r.returncode == 2 and "--strategy vuser needs raw prompt continuation, which --engine openai" in r.stderr
    r = run_stmed("answer", inp, "-m", str(tiny_model), "--engine", "hff", "-o", out)
    assert r.returncode == 2 and "did you mean 'hf'" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists(), "a bad flag stops before any output is written"


def test_a_missing_vllm_is_one_line(tiny_model, tmp_path):
    from conftest import run_stmed

    inp = tmp_path / "q.jsonl"
    inp.write_text(json.dumps({"id": "a", "image": str(sorted((ROOT / "examples" / "images").glob('*.jpg'))[0]), "question": "Q?"}) + "\n")
    r = run_stmed("answer", inp, "-m", tiny_model, "--engine", "vllm", "-o", tmp_path / "a.jsonl")
    assert r.returncode == 2 and "vLLM is not installed in this environment; `make vllm-env`" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and not (tmp_path / "a.jsonl").exists()


def test_no_module_imports_another_modules_private_name():
    """A leading underscore means "this module's own": what another module needs is made public by its owner."""
    found = set()
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stmed") and node.module != name:
                found |= {(name, f"{node.module}.{a.name}") for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")}
    assert not found, f"private names imported from another module: {sorted(found)}"
