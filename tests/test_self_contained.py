"""A fresh clone is whole: nothing tracked reaches outside the project for its data."""

from __future__ import annotations

import subprocess

from conftest import BENCH_DATA, ROOT

# Spelled in pieces so that this file does not match itself.
OUTSIDE = ("../" + "shared", "/work/" + "shared", '/ "' + 'shared" /')


def test_no_tracked_file_refers_outside_the_project():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    assert len(files) > 100, "git ls-files listed the project"
    found = []
    for name in filter(None, files):
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # images and other binary files
        text = data.decode("utf-8", "replace")
        for line_no, line in enumerate(text.splitlines(), 1):
            found += [f"{name}:{line_no}: {line.strip()[:120]}" for s in OUTSIDE if s in line]
    assert found == [], "tracked files refer to data outside the project:\n" + "\n".join(found)


def test_the_carried_benchmark_files_are_tracked():
    listed = subprocess.run(["git", "ls-files", "examples/data"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = set(listed.splitlines())
    assert "examples/data/vqa_rad/VQA_RAD Dataset Public.json" in names and "examples/data/slake/test.json" in names
    assert sum(n.startswith("examples/data/vqa_rad/images/") for n in names) == 315
    assert sum(n.startswith("examples/data/slake/imgs/") for n in names) == 96
    assert (BENCH_DATA / "slake" / "README.md").read_text().count("CC BY 4.0") >= 1, "SLAKE's attribution travels with it"
