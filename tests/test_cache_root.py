"""One cache root for every cache stmed keeps: STMED_CACHE_DIR, with STMED_HOME still read (and noted)."""

from __future__ import annotations

import pytest

from stmed import paths


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path):
    for var in ("STMED_CACHE_DIR", "STMED_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    paths._note_old_name.cache_clear()
    yield
    paths._note_old_name.cache_clear()


def test_stmed_cache_dir_names_the_root_of_both_caches(monkeypatch, tmp_path, capsys):
    from stmed.evaluation import parquet
    from stmed.judge.cache import default_cache_path

    monkeypatch.setenv("STMED_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("STMED_HOME", str(tmp_path / "old"))  # the documented variable wins, silently
    assert paths.cache_root() == tmp_path / "c"
    assert default_cache_path() == tmp_path / "c" / "judge-cache.sqlite"
    assert parquet.cache_root is paths.cache_root, "parquet images go under the same root"
    assert capsys.readouterr().err == ""


def test_the_old_variable_is_read_with_one_note_per_process(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("STMED_HOME", str(tmp_path / "old"))
    assert paths.cache_root() == paths.cache_root() == tmp_path / "old"
    assert capsys.readouterr().err.splitlines() == [
        "stmed: note: STMED_HOME is now STMED_CACHE_DIR; the old spelling goes in the next release"]


def test_without_either_the_root_follows_xdg(monkeypatch, tmp_path):
    assert paths.cache_root() == tmp_path / "user" / ".cache" / "stmed"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_root() == tmp_path / "xdg" / "stmed"


def test_the_judge_command_keeps_its_default_cache_under_the_root(tmp_path):
    from conftest import run_stmed
    from judge_data import make_records
    from openai_server import serve

    inp = tmp_path / "answers.jsonl"
    make_records(inp, 2)
    with serve() as srv:
        r = run_stmed("judge", inp, "--base-url", srv.base_url, "-o", tmp_path / "pairs.jsonl", "-q",
                      env={"STMED_CACHE_DIR": str(tmp_path / "root"), "OPENAI_API_KEY": "sk-test"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "root" / "judge-cache.sqlite").is_file() and "STMED_HOME" not in r.stderr
