"""`stmed inspect` through the real command line, and every command's --help."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import run_stmed

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "images" / "synpic33378.jpg"
FAST = ("--device", "cpu", "-n", "2", "--max-new-tokens", "4")


def made_16bit_png(folder: Path) -> Path:
    grey = np.asarray(Image.open(SAMPLE).convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 16).save(folder / "ct16.png")
    return folder / "ct16.png"


def made_cmyk_jpeg(folder: Path) -> Path:
    Image.open(SAMPLE).convert("CMYK").save(folder / "cmyk.jpg")
    return folder / "cmyk.jpg"


def vqa_rad_jpeg(bench_data: Path) -> Path:
    return sorted((bench_data / "vqa_rad" / "images").glob("*.jpg"))[0]


CASES = {
    "vqa-rad-jpeg": (vqa_rad_jpeg, lambda p: {"format": "JPEG", "size": list(Image.open(p).size)}),
    "ct-dicom": (lambda _: Path(get_testdata_file("CT_small.dcm")),
                 lambda _: {"format": "DICOM", "size": [128, 128], "mode": "MONOCHROME2", "modality": "CT",
                            "window": "min-max"}),
    "mr-dicom": (lambda _: Path(get_testdata_file("MR_small.dcm")),
                 lambda _: {"format": "DICOM", "size": [64, 64], "modality": "MR", "window": "centre 600 / width 1600"}),
    "16-bit-png": (None, lambda _: {"format": "PNG", "size": [470, 383], "mode": "I;16"}),
    "cmyk-jpeg": (None, lambda _: {"format": "JPEG", "size": [470, 383], "mode": "CMYK"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_inspect_json(case, tiny_model, bench_data, tmp_path):
    make, facts = CASES[case]
    if case == "16-bit-png":
        image = made_16bit_png(tmp_path)
    elif case == "cmyk-jpeg":
        image = made_cmyk_jpeg(tmp_path)
    else:
        image = make(bench_data)
    proc = run_stmed("inspect", image, "-m", tiny_model, "--question", "Is there a fracture?", "--json", *FAST)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    for key, value in facts(image).items():
        assert result["facts"][key] == value, (key, result["facts"])
    if case == "16-bit-png":
        assert any("scaled min-max" in n for n in result["facts"]["notes"])
    assert result["image"] == str(image)
    assert result["model"]["model"] == str(tiny_model)
    assert isinstance(result["description"], str) and result["description"]
    asked = [q for q in result["qa"] if not q["self_asked"]]
    assert [q["question"] for q in asked] == ["Is there a fracture?"]
    assert len(result["qa"]) == 3, "the user's question and the model's two own questions"
    assert all(isinstance(q["answer"], str) for q in result["qa"])
    assert "CompressedSamples" not in proc.stdout, "DICOM patient tags must not be printed"
    assert "Traceback" not in proc.stderr


def test_inspect_panel(tiny_model):
    proc = run_stmed("inspect", get_testdata_file("MR_small.dcm"), "-m", tiny_model, "--question", "Which organ [/b] is [red]?", *FAST,
                     env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    for text in ("MR_small.dcm", "modality", "MR", "centre 600 / width 1600", "description", "Which organ [/b] is [red]?", "[self]"):
        assert text in proc.stdout, f"{text!r} missing from the panel:\n{proc.stdout}"
    assert proc.stdout.count("[self]") == 2, "the model's own questions are marked"
    assert "Traceback" not in proc.stderr


def bad_truncated(tmp_path: Path) -> Path:
    data = SAMPLE.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.jpg"


def bad_empty(tmp_path: Path) -> Path:
    (tmp_path / "empty.jpg").write_bytes(b"")
    return tmp_path / "empty.jpg"


def bad_text_png(tmp_path: Path) -> Path:
    (tmp_path / "report.png").write_text("FINDINGS: no acute cardiopulmonary process.\n")
    return tmp_path / "report.png"


def bad_missing(tmp_path: Path) -> Path:
    return tmp_path / "nowhere" / "scan.jpg"


@pytest.mark.parametrize("make, says", [(bad_truncated, "truncated or corrupt JPEG"), (bad_empty, "empty file"),
                                        (bad_text_png, "not a readable image"), (bad_missing, "image not found")])
def test_inspect_bad_image_is_one_line_exit_2(make, says, tmp_path):
    image = make(tmp_path)
    # the model path does not exist either: the image is checked before any model loads
    proc = run_stmed("inspect", image, "-m", tmp_path / "no-model", "--device", "cpu")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("stmed: error: ") and str(image) in lines[0] and says in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_inspect_missing_model_is_one_line_exit_2(tmp_path):
    proc = run_stmed("inspect", SAMPLE, "-m", tmp_path / "no-model", "--device", "cpu")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"stmed: error: -m {tmp_path / 'no-model'}: no such model folder"]


def registered_commands() -> list[str]:
    import typer

    from stmed.cli import app

    return sorted(typer.main.get_command(app).commands)


def test_every_help_exits_0():
    commands = registered_commands()
    assert {"gen-questions", "answer", "inspect"} <= set(commands), commands
    top = run_stmed("--help")
    assert top.returncode == 0, top.stderr
    for name in commands:
        assert name in top.stdout, f"{name} missing from stmed --help"
        proc = run_stmed(name, "--help")
        assert proc.returncode == 0, f"stmed {name} --help: {proc.stderr}"
        assert "Usage:" in proc.stdout and name in proc.stdout and "--help" in proc.stdout, proc.stdout
        assert "Traceback" not in proc.stderr
