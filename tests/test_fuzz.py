"""Property-based fuzzing of every command that reads records (issue 20): hypothesis breaks good
input files the ways other tools' files and hand edits do (tests/fuzz_inputs.py), and every run
must end with exit 0, 1 or 2 and never a traceback; a bad record goes to the errors file with its
file:line and the run goes on; a run that stops writes nothing; an earlier run's records in
``-o`` are kept, never duplicated.

Commands run in this process (typer's test runner) against the loopback OpenAI-compatible server
or the tiny model, so one example costs milliseconds to a second. The budget is fixed (a few
minutes of the suite, derandomized); ``pytest tests/test_fuzz.py --fuzz-long`` runs 20 times as
many examples. Each kind tried and what it gave is collected into docs/reliability.md's fuzz table
(``python tests/test_fuzz.py --write-docs`` after a run with STMED_FUZZ_TABLE set).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import EXAMPLE_IMAGES  # noqa: E402
from fuzz_inputs import FileCase, good, image_dir_entries, input_files, summary  # noqa: E402
from openai_server import serve  # noqa: E402

EARLIER = {"id": "earlier", "note": "a record from an earlier run"}


def budget(request, n: int) -> settings:
    long = request.config.getoption("--fuzz-long")
    return settings(max_examples=n * (20 if long else 1), deadline=None, derandomize=not long, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module")
def server():
    with serve() as srv:
        yield srv


@pytest.fixture(scope="module")
def cli():
    """Run one stmed command in this process: (exit code, stdout, stderr); any exception that
    escapes the command (a traceback for the user) fails the test with the command line."""
    from typer.testing import CliRunner

    from stmed.cli import app

    runner = CliRunner()

    def invoke(*argv, stdin: bytes | None = None):
        args = [str(a) for a in argv]
        result = runner.invoke(app, args, input=stdin, catch_exceptions=True)
        exc = result.exception
        if exc is not None and not isinstance(exc, SystemExit):
            import traceback

            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            raise AssertionError(f"stmed {' '.join(args)} raised {type(exc).__name__}: {exc}\n{tb}")
        assert "Traceback" not in result.stderr + result.stdout
        return result.exit_code, result.stdout, result.stderr

    return invoke


@contextmanager
def folder():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _images(root: Path) -> dict[str, str]:
    return image_dir_entries(root / "images", sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0])


def check_records_run(code: int, stderr: str, src: Path, out: Path, before: bytes, case: FileCase,
                      errors: Path, *, resumes: bool = True) -> None:
    """The rules of DESIGN.md section 4 for a stage that writes records to ``out`` (``resumes``:
    it keeps an earlier run's records; scoring a predictions file instead rewrites it whole)."""
    assert code in (0, 1, 2), (code, stderr)
    if code == 2:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("stmed: error: "), stderr
        assert len(lines) == 1, f"more than the one line: {stderr}"
        assert out.read_bytes() == before, "a run that stopped changed the existing output"
        assert not errors.exists()
        return
    text = out.read_text(encoding="utf-8")
    assert text.endswith("\n")
    ids = [json.loads(line)["id"] for line in text.split("\n") if line]
    assert ids[0] == "earlier" if resumes else "earlier" not in ids, "the earlier run's record was lost"
    assert len(ids) == len(set(ids)), f"duplicated: {ids}"
    if code == 1:
        entries = [json.loads(line) for line in errors.read_text(encoding="utf-8").split("\n") if line]
        assert entries, "exit 1 with an empty errors file"
        for e in entries:
            assert re.fullmatch(rf"{re.escape(str(src))}:\d+", e["where"]), e
            assert e["error"].startswith(e["where"] + ": ") or e["error"].startswith(str(src)), e
    else:
        assert not errors.exists()


def remote(server) -> list:
    return ["--backend", "openai", "--base-url", server.base_url]


def stage_argv(command: str, src: Path, out: Path, server) -> list:
    if command == "gen-questions":
        return ["gen-questions", src, "-m", "policy", *remote(server), "--strategy", "instruct", "-n", "1", "-o", out, "-q"]
    if command == "answer":
        return ["answer", src, "-m", "policy", *remote(server), "-n", "2", "-o", out, "-q"]
    if command == "judge":
        return ["judge", src, *remote(server), "--judge-model", "gpt-4o", "--no-cache", "-o", out, "-q"]
    if command == "eval":
        return ["eval", "--bench", "jsonl", "--data", src, "-m", "policy", *remote(server), "--bootstrap", "0",
                "-o", out, "-q"]
    raise AssertionError(command)


RECORD_STAGES = ["gen-questions", "answer", "judge", "eval"]


@pytest.mark.parametrize("command", RECORD_STAGES)
def test_stage_inputs(command, server, cli, request, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fuzz")

    @budget(request, 30)
    @given(data=st.data())
    def run(data):
        with folder() as d:
            monkeypatch.setenv("STMED_HOME", str(d))
            case = data.draw(input_files(command, _images(d)), label="input")
            src, out = d / "in.jsonl", d / "out.jsonl"
            src.write_bytes(case.body)
            out.write_text(json.dumps(EARLIER) + "\n")
            before = out.read_bytes()
            code, _, stderr = cli(*stage_argv(command, src, out, server))
            check_records_run(code, stderr, src, out, before, case, d / "out.errors.jsonl")
            record_kind(command, case.kind, code)

    run()


# --- the kinds tried, for docs/reliability.md --------------------------------------------------------

TABLE_FILE = os.environ.get("STMED_FUZZ_TABLE")  # where a run collects (command, kind, exit) rows


def record_kind(command: str, kind: str, code: int) -> None:
    if TABLE_FILE:
        with open(TABLE_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps([command, kind, code]) + "\n")


# --- files scored, trained on and shown ----------------------------------------------------------------

def check_stopped_or_done(code: int, stderr: str) -> None:
    assert code in (0, 1, 2), (code, stderr)
    if code == 2:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("stmed: error: ") and len(lines) == 1, stderr


def test_eval_predictions(server, cli, request):
    """``eval --predictions``: a prediction file from another tool, scored against a good benchmark."""

    @budget(request, 30)
    @given(data=st.data())
    def run(data):
        with folder() as d:
            images = _images(d)
            bench, src, out = d / "bench.jsonl", d / "pred.jsonl", d / "out.jsonl"
            bench.write_text("".join(json.dumps(good("eval", i, images["a"])) + "\n" for i in "abc"))
            case = data.draw(input_files("eval-predictions", images), label="predictions")
            src.write_bytes(case.body)
            out.write_text(json.dumps(EARLIER) + "\n")
            before = out.read_bytes()
            code, _, stderr = cli("eval", "--bench", "jsonl", "--data", bench, "--predictions", src, "--bootstrap", "0",
                                  "-o", out, "-q")
            check_records_run(code, stderr, src, out, before, case, d / "out.errors.jsonl", resumes=False)
            if code != 2:
                assert sorted(json.loads(line)["id"] for line in out.read_text().split("\n") if line) == ["a", "b", "c"]
            record_kind("eval --predictions", case.kind, code)

    run()


@pytest.mark.parametrize("command", ["dpo", "sft"])
def test_training_inputs(command, cli, tiny_model, request, monkeypatch):
    """``dpo``/``sft --dry-run`` read and encode every record as training does, then stop: a bad
    record is rejected with its file:line, a file with no usable record stops, nothing is written."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    @budget(request, 12)
    @given(data=st.data())
    def run(data):
        with folder() as d:
            case = data.draw(input_files(command, _images(d)), label="input")
            src, out = d / "in.jsonl", d / "run"
            src.write_bytes(case.body)
            code, stdout, stderr = cli(command, src, "-m", tiny_model, "-o", out, "--dry-run", "--json")
            check_stopped_or_done(code, stderr)
            for line in stderr.splitlines():
                if ".jsonl:" in line and not line.startswith("stmed: error:"):
                    assert re.match(rf"stmed: {re.escape(str(src))}:\d+: ", line), line
            if code == 0:
                assert json.loads(stdout)["id"] in ("a", "b", "c")
            assert not out.exists() or not any(out.iterdir()), "a dry run wrote into the output folder"
            record_kind(command, case.kind, code)

    run()


def test_view_inputs(cli, request):
    """``stmed view`` on records of any stage, with fields other tools write in other shapes."""

    @budget(request, 30)
    @given(data=st.data(), command=st.sampled_from(["view", "judge", "answer", "eval-predictions"]))
    def run(data, command):
        with folder() as d:
            case = data.draw(input_files(command, _images(d)), label="input")
            src, page = d / "in.jsonl", d / "page.html"
            src.write_bytes(case.body)
            code, _, stderr = cli("view", src, "-o", page, "-q")
            check_stopped_or_done(code, stderr)
            if code == 2:
                assert not page.exists()
            else:
                assert page.read_text(encoding="utf-8").rstrip().endswith("</html>")
            record_kind("view", case.kind, code)

    run()


@st.composite
def summaries(draw) -> tuple[str, bytes]:
    """An eval summary file with one field broken, or a file that is no summary at all."""
    from fuzz_inputs import del_path, paths, set_path, values

    base = summary("run")
    kind = draw(st.sampled_from(["wrong type", "missing field", "not JSON", "not an object"]))
    if kind == "not JSON":
        return kind, draw(st.binary(max_size=40))
    if kind == "not an object":
        return kind, json.dumps(draw(values)).encode()
    path = draw(st.sampled_from(paths(base)))
    broken = set_path(base, path, draw(values)) if kind == "wrong type" else del_path(base, path)
    return kind, json.dumps(broken).encode()


def test_report_inputs(cli, request):
    @budget(request, 40)
    @given(case=summaries())
    def run(case):
        kind, body = case
        with folder() as d:
            good_one, bad = d / "good.json", d / "bad.json"
            good_one.write_text(json.dumps(summary("base")))
            bad.write_bytes(body)
            table = d / "table.md"
            code, _, stderr = cli("report", good_one, bad, "--markdown", table)
            check_stopped_or_done(code, stderr)
            assert code != 1
            if code == 2:
                assert not table.exists()
            record_kind("report", kind, code)

    run()


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    """An image file as other tools leave them: cut short, bytes flipped, another format's header."""
    data = sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0].read_bytes()
    kind = draw(st.sampled_from(["truncated", "bytes flipped", "random bytes", "PNG header, JPEG body", "empty"]))
    if kind == "truncated":
        return kind, data[: draw(st.integers(1, len(data) - 1))]
    if kind == "bytes flipped":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= draw(st.integers(1, 255))
        return kind, bytes(buf)
    if kind == "random bytes":
        return kind, draw(st.binary(min_size=1, max_size=300))
    if kind == "PNG header, JPEG body":
        return kind, b"\x89PNG\r\n\x1a\n" + data[8:]
    return kind, b""


def test_inspect_images(cli, tiny_model, request, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    @budget(request, 8)
    @given(case=image_files())
    def run(case):
        kind, body = case
        with folder() as d:
            image = d / "scan.jpg"
            image.write_bytes(body)
            code, stdout, stderr = cli("inspect", image, "-m", tiny_model, "--device", "cpu", "-n", "1",
                                       "--max-new-tokens", "2", "--json")
            assert code in (0, 2), stderr
            if code == 2:
                check_stopped_or_done(code, stderr)
                assert stdout == ""
            else:
                assert json.loads(stdout)
            record_kind("inspect", kind, code)

    run()


# --- what comes back from outside: judge replies, server errors, Batch API files --------------------

class ReplyServer:
    """A loopback chat-completions endpoint that answers every request with ``self.reply``:
    (status, body bytes), or None to drop the connection without a reply."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if outer.reply is None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status, body = outer.reply
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.reply: tuple[int, bytes] | None = (200, b"{}")
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client that hangs up is the point, not news
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion_body(content, **fields) -> bytes:
    body = {"id": "chatcmpl-fuzz", "object": "chat.completion", "created": 0, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}, **fields}
    return json.dumps(body).encode()


@st.composite
def judge_replies(draw) -> tuple[str, tuple[int, bytes] | None]:
    """A judge's reply as servers and models give them."""
    kind = draw(st.sampled_from(["reply text", "reply text", "reply body", "HTTP status", "dropped connection"]))
    if kind == "reply text":
        text = draw(st.one_of(
            st.sampled_from(["", "8", "8 3 and more", "11 3", "-1 5", "0 0", "nan nan", "1e309 2", "7 7",
                             "I'm sorry, I can't help with comparing medical answers.",
                             'Sure! Here are the scores: {"score_1": 8, "score_2": 3} Hope this helps.',
                             '{"score_1": "8", "score_2": "3"}', '{"score_1": [8], "score_2": {"x": 3}}',
                             '{"score_1": 8}', '```json\n{"score_1": 9, "score_2": 2}\n```', "x" * (10 << 20)]),
            st.text(max_size=60)))
        which = ("a 10 MB reply" if len(text) > 1000 else "JSON in prose" if "Sure!" in text
                 else "a refusal" if "sorry" in text else "scores out of range" if text in ("11 3", "-1 5", "0 0", "1e309 2")
                 else "empty" if text == "" else "other text")
        return f"reply: {which}", (200, completion_body(text))
    if kind == "reply body":
        body = draw(st.sampled_from([
            b"", b"not json", b'{"choices": []}', b'{"choices": null}', b'{"choices": [{"message": null}]}',
            b'{"choices": "yes"}', b'{"choices": [1, 2]}', completion_body(None), completion_body(["8", "3"]),
            completion_body({"text": "8 3"}), completion_body("8 3", usage={"prompt_tokens": "many"}),
            completion_body("8 3")[:40]]))
        return "reply body of another shape", (200, body)
    if kind == "HTTP status":
        status = draw(st.sampled_from([400, 401, 403, 404, 408, 413, 429, 500, 502, 503]))
        return f"HTTP {status}", (status, json.dumps({"error": {"message": f"status {status}"}}).encode())
    return "dropped connection", None


@pytest.fixture(scope="module")
def reply_server():
    srv = ReplyServer()
    yield srv
    srv.close()


def test_judge_replies(reply_server, cli, request, monkeypatch):
    """Whatever the judge server answers, each record ends as a pair, a skipped record or a failed
    one (exit 0 or 1), or the run stops with one line (a refused key or model, exit 2)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fuzz")

    @budget(request, 30)
    @given(case=judge_replies())
    def run(case):
        kind, reply = case
        reply_server.reply = reply
        with folder() as d:
            images = _images(d)
            src, out = d / "in.jsonl", d / "pairs.jsonl"
            src.write_text("".join(json.dumps(good("judge", i, images["a"])) + "\n" for i in "ab"))
            code, _, stderr = cli("judge", src, "--backend", "openai", "--base-url", reply_server.base_url,
                                  "--judge-model", "gpt-4o", "--no-cache", "--max-request-time", "0.5",
                                  "--timeout", "5", "-o", out, "-q")
            check_stopped_or_done(code, stderr)
            if code != 2:
                ends = {}
                for name in ("pairs.jsonl", "pairs.skipped.jsonl", "pairs.errors.jsonl"):
                    p = d / name
                    for line in (p.read_text(encoding="utf-8").split("\n") if p.exists() else []):
                        if line:
                            rec = json.loads(line)
                            assert rec["id"] not in ends, f"{rec['id']} in {ends[rec['id']]} and {name}"
                            ends[rec["id"]] = name
                assert set(ends) == {"a", "b"}, ends
                assert out.stat().st_size < (1 << 20), "a huge reply was copied into the pairs"
            record_kind("judge (server replies)", kind, code)

    run()


@pytest.mark.parametrize("damaged", ["model.safetensors", "config.json", "tokenizer.json", "processor_config.json"])
def test_truncated_file_in_the_hub_cache(damaged, tiny_model, tmp_path):
    """A download cut short in the Hugging Face cache (offline, as a user's cache would be): one
    line naming the model, exit 2, not a traceback from safetensors, json or tokenizers."""
    import shutil

    from conftest import run_stmed

    repo = tmp_path / "hf" / "hub" / "models--stmed--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    data = (snapshot / damaged).read_bytes()
    (snapshot / damaged).write_bytes(data[: len(data) // 2])
    image = sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0]
    proc = run_stmed("inspect", image, "-m", "stmed/tiny", "--device", "cpu", "-n", "1", "--max-new-tokens", "2",
                     env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("stmed: error: -m stmed/tiny: "), proc.stderr
    record_kind("any model command (Hub cache)", f"truncated {damaged}", proc.returncode)
