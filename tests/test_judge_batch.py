"""The Batch API backend against the loopback server: files, batches, polling, joining by custom_id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from judge_data import make_records, read_jsonl
from openai_server import serve
from stmed.judge.batch import custom_id, read_outputs, write_request_files
from stmed.judge.cost import PRICES
from stmed.stages.judge import JudgeConfig, judge as judge_records
from stmed.stages.runner import Files
from stmed.records import read_records

SAME = ("id", "chosen", "rejected", "margin", "skip")


@pytest.fixture(autouse=True)
def _key(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch")
    monkeypatch.setenv("STMED_HOME", str(tmp_path / "home"))


def run(tmp_path: Path, srv, inp: Path, out: str, *, cache: Path | None = None, **cfg) -> int:
    options = dict(judge_model="gpt-4o", base_url=srv.base_url, poll_interval=0.05, timeout=5)
    options.update(cfg)
    return judge_records(JudgeConfig(**options), read_records(inp), Files(str(tmp_path / out), quiet=True),
                         cache=cache, prices=dict(PRICES))


def comparable(path: Path) -> dict:
    rows = read_jsonl(path) + read_jsonl(path.with_name(path.stem + ".skipped.jsonl"))
    return {r["id"]: ({k: r.get(k) for k in SAME}, r["judge"]["scores"], r["judge"]["swapped_scores"], r["judge"]["raw"])
            for r in rows}


def answer_offline(srv, requests_file, out):
    """Answer a request file the way `vllm run-batch` or the Batch API would; the output file's path."""
    srv.new_file(requests_file.read_bytes(), "batch", "in.jsonl")
    batch = {"input_file_id": "file-0001"}
    srv.run_batch(batch)
    out.write_bytes(srv.files[batch["output_file_id"]]["_data"])
    return out


def test_batch_round_trip_gives_the_same_pairs_as_openai(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 25)
    with serve() as srv:
        assert run(tmp_path, srv, inp, "online.jsonl", backend="openai") == 0
        online_requests = srv.stats.chat
        assert run(tmp_path, srv, inp, "batch.jsonl", backend="batch", max_batch_requests=20) == 0
        assert srv.stats.chat == online_requests, "the batch backend must not call chat completions"
        assert srv.stats.by_path["POST /v1/batches"] == 3 and srv.stats.by_path["GET /v1/batches/{id}"] >= 9
    assert comparable(tmp_path / "batch.jsonl") == comparable(tmp_path / "online.jsonl")
    batch = read_jsonl(tmp_path / "batch.jsonl")[0]["judge"]
    assert batch["backend"] == "batch" and batch["sources"] == ["batch"]
    reqs = [json.loads(x) for p in sorted((tmp_path / "batch.batch").glob("requests-*.jsonl")) for x in p.read_text().splitlines()]
    assert len(reqs) == 50 and len({r["custom_id"] for r in reqs}) == 50
    assert {r["custom_id"].split("#")[1] for r in reqs} == {"1>2", "2>1"}
    assert reqs[0]["url"] == "/v1/chat/completions" and reqs[0]["body"]["temperature"] == 0.2
    assert "sk-test-batch" not in "".join(p.read_text() for p in (tmp_path / "batch.batch").glob("*"))


def test_prepare_only_then_collect(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 10)
    with serve() as srv:
        assert run(tmp_path, srv, inp, "p.jsonl", backend="batch", prepare_only=True) == 0
        assert srv.stats.by_path == {}, "prepare-only must not touch the network"
        assert not read_jsonl(tmp_path / "p.jsonl")
        (req,) = (tmp_path / "p.batch").glob("requests-*.jsonl")
        # answer the file the way `vllm run-batch` or the Batch API would, then collect it
        out = answer_offline(srv, req, tmp_path / "vllm-output.jsonl")
        assert run(tmp_path, srv, inp, "p.jsonl", backend="batch", collect=[str(out)]) == 0
        assert run(tmp_path, srv, inp, "online.jsonl", backend="openai") == 0
    assert comparable(tmp_path / "p.jsonl") == comparable(tmp_path / "online.jsonl")


def test_missing_replies_and_cache(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 6)
    with serve() as srv:
        assert run(tmp_path, srv, inp, "warm.jsonl", backend="openai", cache=tmp_path / "c.sqlite") == 0
        n = srv.stats.chat
        # every reply is cached: the batch backend writes no request file and submits nothing
        assert run(tmp_path, srv, inp, "cached.jsonl", backend="batch", cache=tmp_path / "c.sqlite") == 0
        assert srv.stats.chat == n and "POST /v1/batches" not in srv.stats.by_path
    assert comparable(tmp_path / "cached.jsonl") == comparable(tmp_path / "warm.jsonl")
    partial = tmp_path / "partial.jsonl"
    failed = {"custom_id": custom_id("q0", (0, 1)), "error": None,
              "response": {"status_code": 500, "body": {"error": {"message": "boom"}}}}
    partial.write_text(json.dumps(failed) + "\n")
    assert run(tmp_path, srv, inp, "part.jsonl", backend="batch", collect=[str(partial)]) == 1
    errors = read_jsonl(tmp_path / "part.errors.jsonl")
    assert len(errors) == 6 and not read_jsonl(tmp_path / "part.jsonl")
    assert any("boom" in e["error"] for e in errors) and any("no reply for" in e["error"] for e in errors)


def test_request_files_split_by_count_and_bytes(tmp_path):
    lines = [json.dumps({"custom_id": str(i), "pad": "x" * 100}) for i in range(10)]
    assert [len(p.read_text().splitlines()) for p in write_request_files(lines, tmp_path / "a", 4, 10**6)] == [4, 4, 2]
    size = len(lines[0]) + 1
    assert [len(p.read_text().splitlines()) for p in write_request_files(lines, tmp_path / "b", 100, 3 * size)] == [3, 3, 3, 1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a"}\nnot json\n')
    from stmed.errors import InputError

    with pytest.raises(InputError, match="bad.jsonl:2"):
        read_outputs([bad])


def test_custom_ids_carry_no_record_id_or_path_and_collect_still_joins(tmp_path):
    """Record ids default to "<image path>:<line>": the Batch API must see neither."""
    inp = tmp_path / "answers.jsonl"
    rows = make_records(inp, 4)
    inp.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "id"}) + "\n" for r in rows))
    records = read_records(inp)
    assert all(str(r["image"]) in r["id"] for r in records), "ids should default to the image path"
    with serve() as srv:
        assert run(tmp_path, srv, inp, "p.jsonl", backend="batch", prepare_only=True) == 0
        (req,) = (tmp_path / "p.batch").glob("requests-*.jsonl")
        ids = [json.loads(x)["custom_id"] for x in req.read_text().splitlines()]
        assert len(ids) == 8
        for cid in ids:
            assert not any(r["id"] in cid or str(r["image"]) in cid or Path(r["image"]).name in cid
                           for r in records), f"custom_id {cid!r} leaks a record id or path"
        # a fresh process (no in-memory state) joins the replies by what it derives from the records
        out = answer_offline(srv, req, tmp_path / "out.jsonl")
    assert run(tmp_path, srv, inp, "p.jsonl", backend="batch", collect=[str(out)]) == 0
    assert len(read_jsonl(tmp_path / "p.jsonl")) + len(read_jsonl(tmp_path / "p.skipped.jsonl")) == 4


def test_prepare_only_with_a_failed_record_exits_1(tmp_path):
    inp = tmp_path / "answers.jsonl"
    make_records(inp, 3)
    with open(inp, "a") as f:
        f.write(json.dumps({"id": "noimg", "image": "missing.jpg", "question": "q?", "answers": ["a b", "c"]}) + "\n")
    with serve() as srv:
        assert run(tmp_path, srv, inp, "p.jsonl", backend="batch", prepare_only=True) == 1
    assert [e["id"] for e in read_jsonl(tmp_path / "p.errors.jsonl")] == ["noimg"]
    assert len(next((tmp_path / "p.batch").glob("requests-*.jsonl")).read_text().splitlines()) == 6
