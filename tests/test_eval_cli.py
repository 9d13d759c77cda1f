"""`stmed eval` and `stmed report` through the real command line, on the real VQA-RAD files
carried in examples/data, and the Hub path on a local folder laid out as the Hub cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BENCH_DATA, run_stmed

RAD = BENCH_DATA / "vqa_rad" / "VQA_RAD Dataset Public.json"


@pytest.fixture(scope="module")
def rad_rows():
    rows = json.loads(RAD.read_text())
    return [r for r in rows if r["phrase_type"] in ("test_freeform", "test_para")]


def _write_llava_preds(path: Path, rows, drop=(), repeat=()) -> None:
    """LLaVA-Med answers: correct for every third question, a hedge otherwise."""
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            if str(r["qid"]) in drop:
                continue
            text = f"The answer is {r['answer']}." if i % 3 == 0 else "It is not clear; it may be normal."
            for _ in range(2 if str(r["qid"]) in repeat else 1):
                f.write(json.dumps({"question_id": r["qid"], "text": text, "model_id": "x"}) + "\n")


def test_predictions_end_to_end(tmp_path, rad_rows):
    _write_llava_preds(tmp_path / "answers.jsonl", rad_rows)
    out, summary = tmp_path / "items.jsonl", tmp_path / "summary.json"
    proc = run_stmed("eval", "--bench", "vqa-rad", "--data", RAD, "--predictions", tmp_path / "answers.jsonl",
                     "-o", out, "--summary", summary, "--bootstrap", "200")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", "items go to -o, the table to stderr"
    assert "451 items = 272 closed + 179 open" in proc.stderr and "open_recall" in proc.stderr
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(items) == 451 and all("prediction" in it and "scores" in it for it in items)
    hedged_closed = next(it for it in items if it["answer_type"] == "CLOSED" and it["prediction"].startswith("It is"))
    # "not" and "normal" contain "no": the hedge hits every "no" answer under LLaVA-Med's rule
    assert hedged_closed["scores"]["closed_hit"] == float(hedged_closed["answer"].lower() == "no")
    s = json.loads(summary.read_text())
    assert s["complete"] is True and s["counts"] == {"total": 451, "open": 179, "closed": 272}
    assert s["benchmark"]["counts"] == {"total": 451, "closed": 272, "open": 179}
    assert len(s["benchmark"]["sha256"]) == 64 and s["run"]["prompt"] == {"name": "free", "version": "1"}
    assert s["stmed_version"] and s["name"] == "answers"
    assert 0 < s["metrics"]["closed_strict"]["value"] < s["metrics"]["closed_accuracy"]["value"]
    assert s["metrics"]["open_recall"]["ci95"][0] <= s["metrics"]["open_recall"]["value"]
    assert "PRES" in s["by_question_type"]

    # stmed's own items file scores to the same numbers when fed back as predictions
    again = tmp_path / "again.json"
    # (and `--bench vqa-rad` without --data is the same file: the copy carried in examples/data)
    proc = run_stmed("eval", "--bench", "vqa-rad", "--predictions", out, "-o", tmp_path / "b.jsonl",
                     "--summary", again, "--bootstrap", "200", "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    by_name = json.loads(again.read_text())
    assert by_name["metrics"] == s["metrics"] and by_name["benchmark"]["sha256"] == s["benchmark"]["sha256"]
    assert by_name["benchmark"]["source"] == {"kind": "bundled", "path": "examples/data/vqa_rad/VQA_RAD Dataset Public.json"}
    assert s["benchmark"]["source"] == {"kind": "file"} and s["benchmark"]["standard"] == "official"

    # report: runs as columns, markdown written
    md = tmp_path / "report.md"
    proc = run_stmed("report", summary, again, "--markdown", md)
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert "| benchmark | metric | answers | items |" in text, "runs are named after their answer files"
    assert f"{s['metrics']['open_recall']['value']:.2f}" in text


def test_missing_repeated_and_unknown_ids_are_clear_errors(tmp_path, rad_rows):
    ids = [str(r["qid"]) for r in rad_rows]
    _write_llava_preds(tmp_path / "missing.jsonl", rad_rows, drop=ids[:3])
    proc = run_stmed("eval", "--bench", "vqa-rad", "--data", RAD, "--predictions", tmp_path / "missing.jsonl",
                     "-o", tmp_path / "o.jsonl")
    assert proc.returncode == 2
    assert "3 benchmark item(s) have no prediction" in proc.stderr and repr(ids[0]) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "o.jsonl").exists(), "a bad predictions file stops before any output"

    _write_llava_preds(tmp_path / "repeat.jsonl", rad_rows, repeat=ids[5:7])
    proc = run_stmed("eval", "--bench", "vqa-rad", "--data", RAD, "--predictions", tmp_path / "repeat.jsonl")
    assert proc.returncode == 2 and "2 question id(s) appear more than once" in proc.stderr
    assert repr(ids[5]) in proc.stderr and repr(ids[6]) in proc.stderr

    with open(tmp_path / "repeat.jsonl", "a") as f:
        f.write("{not json\n")
    proc = run_stmed("eval", "--bench", "vqa-rad", "--data", RAD, "--predictions", tmp_path / "repeat.jsonl")
    n = len(rad_rows) + 2 + 1
    assert proc.returncode == 2 and f"repeat.jsonl:{n}: not valid JSON" in proc.stderr

    # --limit: a full answer file covers the first N items; an id from elsewhere does not belong
    _write_llava_preds(tmp_path / "full.jsonl", rad_rows)
    proc = run_stmed("eval", "--bench", "vqa-rad", "--data", RAD, "--predictions", tmp_path / "full.jsonl",
                     "--limit", "20", "--bootstrap", "0")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 20 and "scoring the first 20" in proc.stderr
    with open(tmp_path / "full.jsonl", "a") as f:
        f.write(json.dumps({"question_id": "no-such-id", "text": "yes"}) + "\n")
    proc = run_stmed("eval", "--bench", "vqa-rad", "--data", RAD, "--predictions", tmp_path / "full.jsonl")
    assert proc.returncode == 2 and "not in the benchmark: 'no-such-id'" in proc.stderr


def test_usage_errors(tmp_path):
    proc = run_stmed("eval", "--bench", "vqa-radd", "--data", RAD, "--predictions", RAD)
    assert proc.returncode == 2 and "did you mean 'vqa-rad'" in proc.stderr
    proc = run_stmed("eval", "--bench", "vqa-rad", "--data", RAD)
    assert proc.returncode == 2 and "either -m MODEL" in proc.stderr
    proc = run_stmed("eval", "--bench", "vqa-rad", "--data", RAD, "--predictions", RAD, "--prompt", "shrt")
    assert proc.returncode == 2 and "did you mean 'short'" in proc.stderr
    (tmp_path / "x.json").write_text("{}")
    proc = run_stmed("report", tmp_path / "x.json")
    assert proc.returncode == 2 and "not an stmed eval summary" in proc.stderr


def test_predictions_path_never_imports_torch(tmp_path, rad_rows):
    _write_llava_preds(tmp_path / "answers.jsonl", rad_rows)
    code = (
        "import sys\n"
        "from stmed.cli import main\n"
        f"sys.argv = ['stmed', 'eval', '--bench', 'vqa-rad', '--data', {str(RAD)!r}, '--predictions',"
        f" {str(tmp_path / 'answers.jsonl')!r}, '-o', {str(tmp_path / 'o.jsonl')!r}, '-q', '--bootstrap', '50']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0", "False", "False"], out.stderr
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 451


def test_report_plot(tmp_path, rad_rows):
    _write_llava_preds(tmp_path / "answers.jsonl", rad_rows)
    summary = tmp_path / "s.json"
    assert run_stmed("eval", "--bench", "vqa-rad", "--data", RAD, "--predictions", tmp_path / "answers.jsonl",
                     "-o", tmp_path / "o.jsonl", "--summary", summary, "-q").returncode == 0
    proc = run_stmed("report", summary, "--plot", tmp_path / "bars.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert proc.returncode == 2 and "--plot needs matplotlib" in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "bars.png").exists()
        return
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_model_end_to_end_with_limit_and_resume(tmp_path, tiny_model):
    out, summary = tmp_path / "items.jsonl", tmp_path / "s.json"
    args = ["eval", "-m", tiny_model, "--bench", "vqa-rad", "--data", RAD, "--max-new-tokens", "4",
            "--device", "cpu", "--batch-size", "2", "-o", out, "--summary", summary, "--prompt", "short"]
    proc = run_stmed(*args, "--limit", "3")
    assert proc.returncode == 0, proc.stderr
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(items) == 3 and all(isinstance(it["prediction"], str) for it in items)
    assert items[0]["gen"]["model"] == str(tiny_model) and items[0]["gen"]["prompt"] == {"name": "short", "version": "1"}
    assert items[0]["gen"]["temperature"] == 0.0, "evaluation decodes greedily"
    s = json.loads(summary.read_text())
    assert s["selected"] == 3 and s["counts"]["total"] == 3 and s["complete"] is False and s["run"]["limit"] == 3
    assert s["run"]["mode"] == "generate" and s["run"]["model"] == str(tiny_model)

    proc = run_stmed(*args, "--limit", "5")  # resumes: the first 3 are kept, 2 more generated
    assert proc.returncode == 0, proc.stderr
    assert "skipped 3" in proc.stderr
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [it["id"] for it in again[:3]] == [it["id"] for it in items] and len(again) == 5
    assert json.loads(summary.read_text())["counts"]["total"] == 5


def test_openai_backend_end_to_end(tmp_path):
    from openai_server import serve

    out, summary = tmp_path / "items.jsonl", tmp_path / "s.json"
    with serve() as server:
        proc = run_stmed("eval", "--engine", "openai", "--base-url", server.base_url, "-m", "served-model",
                         "--bench", "vqa-rad", "--data", RAD, "--limit", "4", "-o", out, "--summary", summary,
                         "--bootstrap", "0", env={"OPENAI_API_KEY": "sk-test-not-a-secret"})
        assert proc.returncode == 0, proc.stderr
        assert server.stats.chat == 4, "one request per question"
    items = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(items) == 4 and all(it["prediction"] for it in items)
    assert items[0]["gen"]["backend"] == "openai" and items[0]["gen"]["model"] == "served-model"
    s = json.loads(summary.read_text())
    assert s["run"]["backend"] == "openai" and s["counts"]["total"] == 4
    assert "sk-test-not-a-secret" not in out.read_text() + summary.read_text() + proc.stderr


def _hub_snapshot(home: Path, repo: str, rev: str, rows, name: str, *, main_ref: bool = False) -> Path:
    """A Hub dataset as huggingface_hub caches it: HF_HOME/hub/datasets--OWNER--NAME/snapshots/REV/..."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo_dir = home / "hub" / f"datasets--{repo.replace('/', '--')}"
    path = repo_dir / "snapshots" / rev / name
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"image": [{"bytes": (RAD.parent / "images" / r["image_name"]).read_bytes(), "path": None} for r in rows],
                      "question": [r["question"] for r in rows], "answer": [str(r["answer"]) for r in rows],
                      "qid": [str(r["qid"]) for r in rows]})
    pq.write_table(table, path, row_group_size=100)
    if main_ref:
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(rev)
    return path


def test_pathvqa_by_name_from_the_hub_cache_offline(tmp_path, rad_rows):
    from stmed.records import file_sha256

    rev = "0123456789abcdef0123456789abcdef01234567"
    # two shards named as `datasets` names them, with a hash suffix; the loader reads both
    shards = [_hub_snapshot(tmp_path / "hf", "flaviagiammarino/path-vqa", rev, rad_rows[:200],
                            "data/test-00000-of-00002-ce5bd56182ee825e.parquet", main_ref=True),
              _hub_snapshot(tmp_path / "hf", "flaviagiammarino/path-vqa", rev, rad_rows[200:],
                            "data/test-00001-of-00002-7ea98873fc919813.parquet")]
    _write_llava_preds(tmp_path / "answers.jsonl", rad_rows)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "STMED_CACHE_DIR": str(tmp_path / "cache")}
    summary = tmp_path / "s.json"
    proc = run_stmed("eval", "--bench", "pathvqa", "--predictions", tmp_path / "answers.jsonl", "-o", tmp_path / "o.jsonl",
                     "--summary", summary, "--bootstrap", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"from Hugging Face Hub flaviagiammarino/path-vqa@{rev[:12]} (parquet): 451 items" in proc.stderr
    bench = json.loads(summary.read_text())["benchmark"]
    assert bench["source"] == {"kind": "hub", "repo_id": "flaviagiammarino/path-vqa", "revision": rev,
                               "files": {f"data/{p.name}": file_sha256(p) for p in shards}}
    assert bench["counts"]["total"] == 451 and bench["standard"] is None
    assert any("expected 6761" in n for n in bench["notes"]), "a copy that is neither split is flagged"
    assert any("as pathvqa's official release defines" in n for n in bench["notes"])
    assert not (tmp_path / "cache").exists(), "scoring answers never writes an image"


def test_missing_download_offline_is_one_line(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    proc = run_stmed("eval", "--bench", "pathvqa", "--predictions", tmp_path / "a.jsonl", "-o", tmp_path / "o.jsonl", env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "flaviagiammarino/path-vqa@main is not in the Hugging Face cache" in proc.stderr
    assert str(tmp_path / "empty") in proc.stderr and "--data" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_pinned_hub_copy_is_hash_checked(tmp_path, rad_rows, monkeypatch):
    """VQA-RAD's Hub copy is pinned by commit and hash; it is used when the project's copy is absent."""
    import dataclasses

    from huggingface_hub import constants

    from stmed.records import file_sha256

    from stmed.evaluation import benchmarks, sources

    pinned = sources.HUB["vqa-rad"]
    (name, _), = pinned.sha256.items()
    shard = _hub_snapshot(tmp_path / "hf", pinned.repo_id, pinned.revision, rad_rows, name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(sources, "BUNDLED_ROOT", tmp_path / "no-copy-here")
    monkeypatch.setenv("STMED_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(benchmarks.InputError, match="differs from the pinned"):
        benchmarks.load_benchmark("vqa-rad")
    monkeypatch.setitem(sources.HUB, "vqa-rad", dataclasses.replace(pinned, sha256={name: file_sha256(shard)}))
    got = benchmarks.load_benchmark("vqa-rad")
    assert got.source["kind"] == "hub" and got.source["revision"] == pinned.revision and got.format == "parquet"
    # no release to join to here: the types are derived, and the notes say the split's own are unknown
    assert got.counts()["total"] == 451 and got.standard is None
    assert any("no official release here" in n for n in got.notes), got.notes
    assert any("with derived answer types" in n for n in got.notes), got.notes
