"""Property-based fuzzing of every command that reads records (issue 20): hypothesis breaks good
input files the ways other tools' files and hand edits do (tests/fuzz_inputs.py), and every run
must end with exit 0, 1 or 2 and never a traceback; a bad record goes to the errors file with its
file:line and the run goes on; a run that stops writes nothing; an earlier run's records in
``-o`` are kept, never duplicated.

Commands run in this process (typer's test runner) against the loopback OpenAI-compatible server
or the tiny model, so one example costs milliseconds to a second. The budget is fixed (a few
minutes of the suite, derandomized); ``pytest tests/test_fuzz.py --fuzz-long`` runs 20 times as
many examples. Each kind tried and the exit codes it gave make docs/reliability.md's fuzz table;
the last test fails when the table is stale (``STMED_WRITE_DOCS=1 pytest tests/test_fuzz.py``
rewrites it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import EXAMPLE_IMAGES  # noqa: E402
from fuzz_inputs import FILE_KINDS, good, image_dir_entries, input_files, summary  # noqa: E402
from openai_server import serve  # noqa: E402

EARLIER = {"id": "earlier", "note": "a record from an earlier run"}


def budget(request, n: int) -> settings:
    long = request.config.getoption("--fuzz-long")
    return settings(max_examples=n * (20 if long else 1), deadline=None, derandomize=not long, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module", autouse=True)
def same_examples_in_any_suite(request):
    """Hypothesis also draws constants it finds in the project's imported modules, so which modules
    earlier tests happened to import would change a default run's examples, and the docs table with
    them. The default (derandomized) run draws from hypothesis's own constants only; --fuzz-long
    keeps the project's (stmed's own strings are good inputs)."""
    from hypothesis.internal.conjecture import providers

    if request.config.getoption("--fuzz-long") or not hasattr(providers, "_get_local_constants"):
        yield
        return
    none = type(providers._local_constants)()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(providers, "_get_local_constants", lambda: none)
        providers.CONSTANTS_CACHE.cache.clear()
        yield
    providers.CONSTANTS_CACHE.cache.clear()


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

    def invoke(*argv):
        args = [str(a) for a in argv]
        result = runner.invoke(app, args, catch_exceptions=True)
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


def check_records_run(code: int, stderr: str, src: Path, out: Path, before: tuple[bytes, set], errors: Path, *,
                      resumes: bool = True) -> None:
    """The rules of DESIGN.md section 4 for a stage that writes records to ``out``; ``before`` is
    (the output's bytes, the folder's file names) before the run. ``resumes``: it keeps an earlier
    run's records (scoring a predictions file instead rewrites the output whole)."""
    assert code in (0, 1, 2), (code, stderr)
    if code == 2:
        check_stopped_or_done(code, stderr)
        assert out.read_bytes() == before[0], "a run that stopped changed the existing output"
        assert {p.name for p in out.parent.iterdir()} == before[1], "a run that stopped wrote a file"
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
            assert e["error"].startswith(e["where"] + ": "), e
    else:
        assert not errors.exists()


def remote(server, src: Path, flag: str = "--engine") -> list:
    """The loopback server as the engine (the judge's backend), and the images' folder as
    --image-root ("../" paths escape it)."""
    return [flag, "openai", "--base-url", server.base_url, "--image-root", src.parent / "images"]


def stage_argv(command: str, src: Path, out: Path, server) -> list:
    if command == "gen-questions":
        return ["gen-questions", src, "-m", "policy", *remote(server, src), "--strategy", "instruct", "-n", "1", "-o", out, "-q"]
    if command == "answer":
        return ["answer", src, "-m", "policy", *remote(server, src), "-n", "2", "-o", out, "-q"]
    if command == "judge":
        return ["judge", src, *remote(server, src, "--backend"), "--judge-model", "gpt-4o", "--no-cache", "-o", out, "-q"]
    if command == "eval":
        return ["eval", "--bench", "jsonl", "--data", src, "-m", "policy", *remote(server, src), "--bootstrap", "0",
                "-o", out, "-q"]
    raise AssertionError(command)


def each_kind(request, command: str, check, scale: float = 1.0, label: str | None = None) -> None:
    """For every kind of broken input file (fuzz_inputs.FILE_KINDS), its budget of examples of
    ``command``'s records: ``check(folder, images, src)`` runs a command on ``src`` and returns its
    exit code, counted in the docs table under ``label`` (default: the command)."""
    for kind, n in FILE_KINDS.items():
        @budget(request, max(1, round(n * scale)))
        @given(data=st.data())
        def run(data):
            with folder() as d:
                images = _images(d)
                src = d / "in.jsonl"
                src.write_bytes(data.draw(input_files(command, images, kind), label=kind))
                record_kind(label or command, kind, check(d, images, src))

        run()


RECORD_STAGES = ["gen-questions", "answer", "judge", "eval"]


@pytest.mark.parametrize("command", RECORD_STAGES)
def test_stage_inputs(command, server, cli, request, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fuzz")

    def check(d, images, src):
        monkeypatch.setenv("STMED_HOME", str(d))
        out = d / "out.jsonl"
        out.write_text(json.dumps(EARLIER) + "\n")
        before = out.read_bytes(), {p.name for p in d.iterdir()}
        code, _, stderr = cli(*stage_argv(command, src, out, server))
        check_records_run(code, stderr, src, out, before, d / "out.errors.jsonl")
        return code

    each_kind(request, command, check)


# --- the kinds tried, for docs/reliability.md --------------------------------------------------------

TRIED: dict[tuple[str, str], dict[int, int]] = {}  # (command, kind) -> {exit code: examples}


def record_kind(command: str, kind: str, code: int) -> None:
    seen = TRIED.setdefault((command, kind), {})
    seen[code] = seen.get(code, 0) + 1


# --- files scored, trained on and shown ----------------------------------------------------------------

def check_stopped_or_done(code: int, stderr: str) -> None:
    assert code in (0, 1, 2), (code, stderr)
    if code == 2:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("stmed: error: ") and len(lines) == 1, stderr


def test_eval_predictions(server, cli, request):
    """``eval --predictions``: a prediction file from another tool, scored against a good benchmark."""

    def check(d, images, src):
        bench, out = d / "bench.jsonl", d / "out.jsonl"
        bench.write_text("".join(json.dumps(good("eval", i, images["a"])) + "\n" for i in "abc"))
        out.write_text(json.dumps(EARLIER) + "\n")
        before = out.read_bytes(), {p.name for p in d.iterdir()}
        code, _, stderr = cli("eval", "--bench", "jsonl", "--data", bench, "--predictions", src, "--bootstrap", "0",
                              "-o", out, "-q")
        check_records_run(code, stderr, src, out, before, d / "out.errors.jsonl", resumes=False)
        if code != 2:
            assert sorted(json.loads(line)["id"] for line in out.read_text().split("\n") if line) == ["a", "b", "c"]
        return code

    each_kind(request, "eval --predictions", check)


@pytest.mark.parametrize("command", ["dpo", "sft"])
def test_training_inputs(command, cli, tiny_model, request, monkeypatch):
    """``dpo``/``sft --dry-run`` read and encode every record as training does, then stop: a bad
    record is rejected with its file:line, a file with no usable record stops, nothing is written."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def check(d, images, src):
        out = d / "run"
        code, stdout, stderr = cli(command, src, "-m", tiny_model, "-o", out, "--dry-run", "--json")
        check_stopped_or_done(code, stderr)
        for line in stderr.splitlines():
            if ".jsonl:" in line and not line.startswith("stmed: error:"):
                assert re.match(rf"stmed: {re.escape(str(src))}:\d+: ", line), line
        if code == 0:
            assert json.loads(stdout)["id"] in ("a", "b", "c")
        assert not out.exists() or not any(out.iterdir()), "a dry run wrote into the output folder"
        return code

    each_kind(request, command, check, scale=0.5)


@pytest.mark.parametrize("shape", ["view", "judge", "answer", "eval --predictions"])
def test_view_inputs(shape, cli, request):
    """``stmed view`` on records of any stage (pairs, answers, scored items), broken every way."""

    def check(d, images, src):
        page = d / "page.html"
        code, _, stderr = cli("view", src, "-o", page, "-q")
        check_stopped_or_done(code, stderr)
        if code == 2:
            assert not page.exists()
        else:
            assert page.read_text(encoding="utf-8").rstrip().endswith("</html>")
        return code

    each_kind(request, shape, check, scale=0.5, label="view" if shape == "view" else f"view ({shape.split()[0]} records)")


@st.composite
def train_logs(draw) -> tuple[str, bytes, bytes]:
    """A dpo run's train_log.jsonl and _meta.json, one row (or the meta) broken."""
    from fuzz_inputs import RECORD_KINDS, broken_record, values

    rows = [{"step": k, "epoch": k / 4, "loss": 0.69 - k / 50, "learning_rate": 5e-6, "rewards/chosen": 0.01 * k,
             "rewards/rejected": -0.01 * k, "rewards/margins": 0.02 * k, "rewards/accuracies": 0.5} for k in range(1, 5)]
    meta = {"stage": "dpo", "model": "tiny", "data": {"pairs": 16}, "config": {"beta": 0.1}}
    kind = draw(st.sampled_from([*RECORD_KINDS, "meta broken"]))
    if kind == "meta broken":
        meta = draw(broken_record(meta, "several at once")) if draw(st.booleans()) else draw(values)
    else:
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = draw(broken_record(rows[i], kind))
    log = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    return f"training log: {kind}", log, json.dumps(meta).encode()


def test_view_training_runs(cli, request):
    """``stmed view`` on a training folder whose log rows or _meta.json have other shapes."""

    @budget(request, 30)
    @given(case=train_logs())
    def run(case):
        kind, log, meta = case
        with folder() as d:
            (d / "run").mkdir()
            (d / "run" / "train_log.jsonl").write_bytes(log)
            (d / "run" / "_meta.json").write_bytes(meta)
            code, _, stderr = cli("view", d / "run", "-o", d / "page.html", "-q")
            check_stopped_or_done(code, stderr)
            assert code != 1
            record_kind("view (training run)", kind, code)

    run()


@st.composite
def summaries(draw) -> tuple[str, bytes]:
    """An eval summary file with one field broken, or a file that is no summary at all."""
    from fuzz_inputs import del_path, paths, set_path, values

    base = summary("run")
    kind = draw(st.sampled_from(["wrong type", "missing field", "not JSON", "not an object"]))
    if kind == "not JSON":
        return f"summary: {kind}", draw(st.binary(max_size=40))
    if kind == "not an object":
        return f"summary: {kind}", json.dumps(draw(values)).encode()
    path = draw(st.sampled_from(paths(base)))
    broken = set_path(base, path, draw(values)) if kind == "wrong type" else del_path(base, path)
    return f"summary: {kind}", json.dumps(broken).encode()


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


# image files as other tools leave them, with how many examples the default run draws of each
IMAGE_KINDS = {"truncated": 3, "bytes flipped": 3, "random bytes": 2, "PNG header, JPEG body": 1, "empty": 1}


@st.composite
def image_files(draw, kind: str) -> bytes:
    """An image file of ``kind``: cut short, bytes flipped, another format's header..."""
    data = sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0].read_bytes()
    if kind == "truncated":
        return data[: draw(st.integers(1, len(data) - 1))]
    if kind == "bytes flipped":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= draw(st.integers(1, 255))
        return bytes(buf)
    if kind == "random bytes":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "PNG header, JPEG body":
        return b"\x89PNG\r\n\x1a\n" + data[8:]
    return b""


def test_inspect_images(cli, tiny_model, request, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    for kind, n in IMAGE_KINDS.items():
        @budget(request, n)
        @given(body=image_files(kind))
        def run(body):
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


def judge_replies() -> list[tuple[str, tuple[int, bytes] | None]]:
    """A judge's replies as servers and models give them: (kind, what the server sends)."""
    texts = {"empty": [""], "one score": ["8"], "scores and more": ["8 3 and more"], "a tie": ["7 7"],
             "scores out of range": ["11 3", "-1 5", "0 0", "1e309 2", "nan nan"],
             "a refusal": ["I'm sorry, I can't help with comparing medical answers."],
             "JSON in prose": ['Sure! Here are the scores: {"score_1": 8, "score_2": 3} Hope this helps.',
                               '```json\n{"score_1": 9, "score_2": 2}\n```'],
             "JSON of another shape": ['{"score_1": "8", "score_2": "3"}', '{"score_1": [8], "score_2": {"x": 3}}',
                                       '{"score_1": 8}', "[8, 3]"],
             "a 10 MB reply": ["8 3 " + "x" * (10 << 20)]}
    cases = [(f"reply: {kind}", (200, completion_body(t))) for kind, ts in texts.items() for t in ts]
    bodies = [b"", b"not json", b'{"choices": []}', b'{"choices": null}', b'{"choices": [{"message": null}]}',
              b'{"choices": "yes"}', b'{"choices": [1, 2]}', completion_body(None), completion_body(["8", "3"]),
              completion_body({"text": "8 3"}), completion_body("8 3", usage={"prompt_tokens": "many"}),
              completion_body("8 3")[:40]]
    cases += [("reply body of another shape", (200, body)) for body in bodies]
    cases += [(f"HTTP {status}", (status, json.dumps({"error": {"message": f"status {status}"}}).encode()))
              for status in (400, 401, 403, 404, 408, 413, 429, 500, 502, 503)]
    return cases + [("dropped connection", None)]


@pytest.fixture(scope="module")
def reply_server():
    srv = ReplyServer()
    yield srv
    srv.close()


def test_judge_replies(reply_server, cli, request, monkeypatch):
    """Whatever the judge server answers, each record ends as a pair, a skipped record or a failed
    one (exit 0 or 1), or the run stops with one line (a refused key or model, exit 2)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fuzz")

    def judge_with(kind: str, reply) -> None:
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
                for name in ("pairs.jsonl", "pairs.skipped.jsonl", "pairs.errors.jsonl"):
                    assert not (d / name).exists() or (d / name).stat().st_size < (1 << 20), "a huge reply was copied"
            record_kind("judge (server replies)", kind, code)

    for kind, reply in judge_replies():
        judge_with(kind, reply)

    @budget(request, 10)
    @given(text=st.text(max_size=60))
    def any_text(text):
        judge_with("reply: any text", (200, completion_body(text)))

    any_text()


@st.composite
def batch_outputs(draw, lines: list[bytes]) -> tuple[str, bytes]:
    """A Batch API (or ``vllm run-batch``) output file with lines missing, repeated, foreign or broken."""
    from fuzz_inputs import del_path, paths, set_path, values

    kind = draw(st.sampled_from(["lines missing", "lines repeated", "extra lines", "a field broken", "not JSON"]))
    rows = list(lines)
    if kind == "lines missing":
        for _ in range(draw(st.integers(1, len(rows)))):
            rows.pop(draw(st.integers(0, len(rows) - 1)))
    elif kind == "lines repeated":
        rows += [rows[draw(st.integers(0, len(rows) - 1))] for _ in range(draw(st.integers(1, 3)))]
    elif kind == "extra lines":
        rows.insert(draw(st.integers(0, len(rows))), json.dumps(
            {"custom_id": draw(st.text(max_size=20)), "response": None, "error": None}).encode())
    elif kind == "a field broken":
        i = draw(st.integers(0, len(rows) - 1))
        row = json.loads(rows[i])
        path = draw(st.sampled_from(paths(row)))
        rows[i] = json.dumps(set_path(row, path, draw(values)) if draw(st.booleans()) else del_path(row, path)).encode()
    else:
        rows[draw(st.integers(0, len(rows) - 1))] = draw(st.binary(max_size=30)).replace(b"\n", b"")
    return kind, b"\n".join(rows) + b"\n"


def test_batch_output_files(cli, request, monkeypatch):
    """``judge --backend batch --collect``: every input record ends as a pair, skipped or failed,
    or the file is refused with one line naming file:line."""
    from openai_server import Server

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fuzz")
    with folder() as d:
        images = _images(d)
        src = d / "in.jsonl"
        src.write_text("".join(json.dumps(good("judge", i, images["a"])) + "\n" for i in "abc"))
        batch_dir = d / "batch"
        common = ["--backend", "batch", "--base-url", "http://127.0.0.1:9/v1", "--judge-model", "gpt-4o",
                  "--no-cache", "--batch-dir", batch_dir, "-q"]
        code, _, stderr = cli("judge", src, *common, "--prepare-only", "-o", d / "prep.jsonl")
        assert code == 0, stderr
        (requests,) = batch_dir.glob("requests-*.jsonl")
        srv = Server()  # its batch runner answers the file offline, as the Batch API would
        try:
            srv.new_file(requests.read_bytes(), "batch", "in.jsonl")
            batch = {"input_file_id": "file-0001"}
            srv.run_batch(batch)
            answered = srv.files[batch["output_file_id"]]["_data"].splitlines()
        finally:
            srv.server_close()

        @budget(request, 30)
        @given(case=batch_outputs(answered))
        def run(case):
            kind, body = case
            with folder() as e:
                output, pairs = e / "output.jsonl", e / "pairs.jsonl"
                output.write_bytes(body)
                code, _, stderr = cli("judge", src, *common, "--collect", output, "-o", pairs)
                check_stopped_or_done(code, stderr)
                if code == 2:
                    assert re.search(rf"{re.escape(str(output))}(:\d+)?: ", stderr), stderr
                    assert not pairs.exists()
                else:
                    ends = [json.loads(line)["id"] for name in ("pairs.jsonl", "pairs.skipped.jsonl", "pairs.errors.jsonl")
                            if (e / name).exists() for line in (e / name).read_text().split("\n") if line]
                    assert sorted(ends) == ["a", "b", "c"], ends
                record_kind("judge --collect (Batch output)", kind, code)

        run()


# --- the table in docs/reliability.md (this test runs last: it reads what the others tried) ------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
BEGIN, END = "<!-- fuzz: begin (generated from tests/test_fuzz.py) -->", "<!-- fuzz: end -->"
def fuzz_table() -> str:
    """Two tables: the kinds of broken input file (rows) by the commands that read them (columns),
    each cell the exit codes seen; then the inputs from outside, one row per kind."""
    from fuzz_inputs import FILE_KINDS

    codes = lambda seen: " / ".join(map(str, sorted(seen))) if seen else "-"  # noqa: E731
    by_file = sorted({c for (c, k) in TRIED if k in FILE_KINDS}, key=lambda c: (c.startswith("view"), c))
    rows = ["| input file | " + " | ".join(by_file) + " |", "|---|" + "---|" * len(by_file)]
    for kind in FILE_KINDS:
        rows.append(f"| {kind} | " + " | ".join(codes(TRIED.get((c, kind), {})) for c in by_file) + " |")
    examples = sum(n for (c, k), seen in TRIED.items() if k in FILE_KINDS for n in seen.values())
    rows += ["", f"{examples} examples. Then what comes from outside the input file:", "",
             "| command | input | examples | exit codes |", "|---|---|---:|---|"]
    for (command, kind), seen in sorted(TRIED.items()):
        if kind not in FILE_KINDS:
            rows.append(f"| {command} | {kind} | {sum(seen.values())} | {codes(seen)} |")
    return "\n".join(rows) + "\n"


def test_docs_fuzz_table(request):
    """docs/reliability.md lists every kind of input the fuzz tests tried, with what it gave."""
    opt = request.config.option
    whole = not (opt.keyword or opt.markexpr or any("::" in a for a in request.config.args))
    if request.config.getoption("--fuzz-long") or not whole:
        pytest.skip("the table is checked on a whole default run of this file")
    doc = DOC.read_text(encoding="utf-8")
    head, rest = doc.split(BEGIN, 1)
    new = f"{head}{BEGIN}\n{fuzz_table()}{END}{rest.split(END, 1)[1]}"
    if os.environ.get("STMED_WRITE_DOCS"):
        DOC.write_text(new, encoding="utf-8")
    if doc != new:
        import difflib

        changed = [ln for ln in difflib.unified_diff(doc.splitlines(), new.splitlines(), lineterm="", n=0)
                   if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
        if any(Path(str(item.fspath)).name != Path(__file__).name for item in request.session.items):
            # Earlier test files can still shift hypothesis's draws in this process: the table is what
            # this file draws on its own, so that is what decides.
            alone = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                                   cwd=DOC.parents[1], capture_output=True, text=True,
                                   env={k: v for k, v in os.environ.items() if k != "STMED_WRITE_DOCS"})
            if alone.returncode == 0:
                return
            changed.append(alone.stdout[-3000:])
        pytest.fail("docs/reliability.md's fuzz table is stale (run STMED_WRITE_DOCS=1 pytest tests/test_fuzz.py):\n"
                    + "\n".join(changed[:40]))
