"""The README's promises: docs/cli.md is the commands' current --help, and the README opens with them."""

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))


def test_cli_reference_is_current():
    from gen_cli_docs import render

    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == render(), "docs/cli.md is stale: run `make docs` and commit it"


def test_readme_opens_with_the_two_setup_commands():
    head = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:12]
    assert any(line.startswith("make demo") for line in head), "README must open with `make demo`"
    assert any(line.startswith("make test") for line in head), "README must open with `make test`"
    assert "make test" in (ROOT / ".ci" / "run").read_text(), ".ci/run must run the README's test command"
