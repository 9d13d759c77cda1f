"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

Speaks ``POST /v1/chat/completions``, the files endpoints and the batches endpoints, so the
real ``openai`` SDK talks to it over real sockets. Replies are deterministic from the request:

- a judge prompt (``[Answer 1]`` ... ``[End of Answer 2]``) gets one score per answer, its word
  count capped to 1..10, so the longer answer wins in either order and ties are easy to make;
  ``position_bias`` adds points to whichever answer is shown first; JSON when asked for
- any other prompt gets a short answer built from the question, the seed and the choice index,
  so ``n`` > 1 and ``seed`` behave like a sampling server
- ``reply=fn`` scripts the text: ``fn(prompt text)`` returns the reply, or None for the above

Faults are injected by rate (``faults={"429": 0.05, ...}``, drawn from a seeded RNG): 429 with
Retry-After, 500, 503, slow replies (sleep ``slow_seconds``), dropped connections, invalid JSON
bodies and unparseable judge text. ``stats`` counts requests and the most seen in flight.

Run standalone: ``python tests/openai_server.py --port 8000 --delay 0.2``.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import random
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "503", "slow", "drop", "badjson", "garbage")
_ANSWER = re.compile(r"\[Answer (\d)\]\n(.*?)\n\[End of Answer \1\]", re.S)


@dataclass
class Stats:
    chat: int = 0  # chat-completion requests received, faulted or not
    in_flight: int = 0
    max_in_flight: int = 0
    faults: dict = field(default_factory=dict)
    by_path: dict = field(default_factory=dict)
    auth_headers: set = field(default_factory=set)
    times: list = field(default_factory=list)  # (monotonic time, status) per chat request
    images: list = field(default_factory=list)  # the image data URLs of the chat requests answered


def judge_scores(text: str, position_bias: int = 0) -> tuple[int, int] | None:
    found = dict(_ANSWER.findall(text))
    if "1" not in found or "2" not in found:
        return None
    s1, s2 = (max(1, min(10, len(found[k].split()))) for k in ("1", "2"))
    return min(10, s1 + position_bias), s2


def prompt_text(body: dict) -> str:
    parts = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts += [p.get("text", "") for p in c if p.get("type") == "text"]
    return "\n".join(parts)


def image_urls(body: dict) -> list[str]:
    return [p["image_url"]["url"] for m in body.get("messages", []) if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") == "image_url"]


def completion(body: dict, position_bias: int = 0, garbage: bool = False, reply=None) -> dict:
    """The deterministic reply to a chat-completions body."""
    text = prompt_text(body)
    scripted = reply(text) if reply is not None else None
    n = int(body.get("n") or 1)
    scores = judge_scores(text, position_bias)
    json_mode = (body.get("response_format") or {}).get("type") in ("json_object", "json_schema")
    contents = []
    for k in range(n):
        if garbage:
            contents.append("I am unable to compare these answers.")
        elif scripted is not None:
            contents.append(scripted)
        elif scores is not None and json_mode:
            contents.append(json.dumps({"score_1": scores[0], "score_2": scores[1], "reason": "Longer answer."}))
        elif scores is not None:
            contents.append(f"{scores[0]} {scores[1]}\nThe higher-scored answer is more detailed.")
        else:
            q = text.strip().splitlines()[-1][:60] if text.strip() else ""
            tag = hashlib.sha256(f"{q}|{body.get('seed')}|{k}".encode()).hexdigest()[:6]
            contents.append(f"It shows {q.lower().rstrip('?')} ({tag}).")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "test"),
        "choices": [
            {"index": k, "message": {"role": "assistant", "content": c}, "finish_reason": "stop"}
            for k, c in enumerate(contents)
        ],
        "usage": {
            "prompt_tokens": len(text) // 4 + 85,
            "completion_tokens": sum(len(c) // 4 + 1 for c in contents),
            "total_tokens": len(text) // 4 + 85 + sum(len(c) // 4 + 1 for c in contents),
        },
    }


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # the default backlog of 5 resets bursts of new connections

    def __init__(self, port=0, *, delay=0.0, faults=None, seed=0, retry_after="0", slow_seconds=2.0,
                 position_bias=0, batch_polls=2, script=(), expect_key=None, reply=None):
        super().__init__(("127.0.0.1", port), Handler)
        self.delay, self.faults, self.retry_after = delay, dict(faults or {}), retry_after
        self.slow_seconds, self.position_bias, self.batch_polls = slow_seconds, position_bias, batch_polls
        self.script = list(script)  # faults for the first requests, in order (None: no fault), then the rates
        self.reply = reply  # fn(prompt text) -> reply text, or None for the built-in replies
        self.expect_key = expect_key  # when set, any other key gets OpenAI's 401, which echoes it masked
        self.rng = random.Random(seed)
        self.lock = threading.RLock()  # run_batch makes files while holding it
        self.stats = Stats()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def draw_fault(self) -> str | None:
        with self.lock:
            if self.script:
                name = self.script.pop(0)
                if name:
                    self.stats.faults[name] = self.stats.faults.get(name, 0) + 1
                return name
            x, acc = self.rng.random(), 0.0
            for name in FAULTS:
                acc += self.faults.get(name, 0.0)
                if x < acc:
                    self.stats.faults[name] = self.stats.faults.get(name, 0) + 1
                    return name
        return None

    def new_file(self, data: bytes, purpose: str, filename: str) -> dict:
        with self.lock:
            fid = f"file-{len(self.files) + 1:04d}"
            self.files[fid] = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                               "filename": filename, "purpose": purpose, "status": "processed", "_data": data}
        return self.files[fid]

    def run_batch(self, batch: dict) -> None:
        """Answers every line of the input file without faults, as OpenAI's batch runner would."""
        out, err, done, failed = [], [], 0, 0
        for line in self.files[batch["input_file_id"]]["_data"].decode().splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            body = req.get("body") or {}
            if not body.get("messages"):
                failed += 1
                err.append({"id": f"batch_req_{failed}", "custom_id": req.get("custom_id"), "response": None,
                            "error": {"code": "invalid_request", "message": "messages is required"}})
                continue
            done += 1
            reply = completion(body, self.position_bias, reply=self.reply)  # scripted replies too
            out.append({"id": f"batch_req_{done}", "custom_id": req.get("custom_id"),
                        "response": {"status_code": 200, "request_id": f"req_{done}", "body": reply}, "error": None})
        dump = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()  # noqa: E731
        batch["output_file_id"] = self.new_file(dump(out), "batch_output", "output.jsonl")["id"] if out else None
        batch["error_file_id"] = self.new_file(dump(err), "batch_output", "errors.jsonl")["id"] if err else None
        batch["request_counts"] = {"total": done + failed, "completed": done, "failed": failed}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real server; drops then hit reused sockets
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, delayed ACKs add ~40 ms

    def log_message(self, *args) -> None:  # quiet: tests read stats, not access logs
        pass

    def _send(self, status: int, payload, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _count(self) -> None:
        s = self.server.stats
        with self.server.lock:
            key = f"{self.command} {re.sub(r'/(file|batch)-[^/]+', r'/{id}', self.path)}"
            s.by_path[key] = s.by_path.get(key, 0) + 1
            s.auth_headers.add(self.headers.get("Authorization", ""))

    def do_POST(self) -> None:
        self._count()
        body = self._body()
        if self.path.endswith("/chat/completions"):
            return self._chat(body)
        if self.path.endswith("/files"):
            return self._upload(body)
        if self.path.endswith("/batches"):
            req = json.loads(body)
            srv = self.server
            with srv.lock:
                bid = f"batch-{len(srv.batches) + 1:04d}"
                srv.batches[bid] = batch = {
                    "id": bid, "object": "batch", "endpoint": req["endpoint"], "input_file_id": req["input_file_id"],
                    "completion_window": req.get("completion_window", "24h"), "status": "validating",
                    "created_at": int(time.time()), "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "_polls": 0,
                }
            return self._send(200, _public(batch))
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_GET(self) -> None:
        self._count()
        srv = self.server
        m = re.search(r"/files/([^/]+)(/content)?$", self.path)
        if m and m.group(1) in srv.files:
            f = srv.files[m.group(1)]
            return self._send(200, None, raw=f["_data"]) if m.group(2) else self._send(200, _public(f))
        m = re.search(r"/batches/([^/]+)$", self.path)
        if m and m.group(1) in srv.batches:
            b = srv.batches[m.group(1)]
            with srv.lock:
                b["_polls"] += 1
                if b["_polls"] == 1:
                    b["status"] = "in_progress"
                elif b["_polls"] > srv.batch_polls and b["status"] == "in_progress":
                    srv.run_batch(b)  # finishes only after a few polls, so clients must really poll
                    b["status"] = "completed"
            return self._send(200, _public(b))
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def _upload(self, body: bytes) -> None:
        msg = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
        fields, data, filename = {}, b"", "upload.jsonl"
        for part in msg.get_payload():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                data, filename = part.get_payload(decode=True), part.get_filename() or filename
            else:
                fields[name] = part.get_payload(decode=True).decode()
        self._send(200, _public(self.server.new_file(data, fields.get("purpose", "batch"), filename)))

    def _chat(self, body: bytes) -> None:
        srv, s = self.server, self.server.stats
        with srv.lock:
            s.chat += 1
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
        status = 200
        try:
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if srv.expect_key is not None and key != srv.expect_key:
                status = 401
                masked = f"{key[:8]}{'*' * 10}{key[-4:]}"
                return self._send(401, {"error": {"message": f"Incorrect API key provided: {masked}.", "code": "invalid_api_key"}})
            fault = srv.draw_fault()
            if srv.delay:
                time.sleep(srv.delay)
            if fault == "429":
                status = 429
                return self._send(429, {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                                  headers={"Retry-After": srv.retry_after})
            if fault in ("500", "503"):
                status = int(fault)
                return self._send(status, {"error": {"message": "The server had an error", "type": "server_error"}})
            if fault == "slow":
                time.sleep(srv.slow_seconds)
            if fault == "drop":
                status = 0
                self.close_connection = True
                self.connection.shutdown(2)  # no status line at all: the client sees a dropped socket
                return
            if fault == "badjson":
                return self._send(200, None, raw=b'{"id": "chatcmpl-x", "choices": [')
            parsed = json.loads(body)
            with srv.lock:
                s.images += image_urls(parsed)
            self._send(200, completion(parsed, srv.position_bias, garbage=fault == "garbage", reply=srv.reply))
        except (BrokenPipeError, ConnectionResetError, OSError):
            status = -1  # the client gave up on a slow reply
        finally:
            with srv.lock:
                s.in_flight -= 1
                s.times.append((time.monotonic(), status))


def _public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


@contextmanager
def serve(**options):
    """A server on a free port in a background thread, shut down on exit."""
    srv = Server(**options)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0, help="spread evenly over all fault kinds")
    args = ap.parse_args()
    server = Server(args.port, delay=args.delay, faults={f: args.fault_rate / len(FAULTS) for f in FAULTS})
    print(f"serving on {server.base_url}", flush=True)
    server.serve_forever()
