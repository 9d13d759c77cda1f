"""The OpenAI Batch API backend: request files out, replies in, the same pairs as ``openai``.

1. Prepare every record as the online path would; replies already in the cache are used as is.
2. Write the missing requests as Batch API JSONL (``custom_id`` = the first 16 hex digits of the
   record id's sha256 ``#`` order, e.g. ``3f1c9a0b5d2e7f41#2>1``: never the id, which may be a
   file path), split by request count and bytes. ``--prepare-only`` stops here; the same files
   run under ``vllm run-batch``.
3. Upload each file, create a batch, poll until it ends (state.json remembers the batch ids, so
   a killed run resumes polling instead of paying again), download output and error files.
4. Join replies by ``custom_id``, cache them, and decide each record with the shared policy code.
``--collect FILE`` skips 1-3's network part and builds pairs from output files you already have.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from stmed.api import ChatRequest, ChatResult
from stmed.api.openai_client import api_key_from_env, describe, is_transient, redact, request_body
from stmed.errors import InputError
from stmed.judge.config import BatchOptions, JudgeConfig
from stmed.judge.common import Judgement, Outcome, decide, orders, outcome, prepare_or_decide, request_for
from stmed.judge.core import JudgeCore, Reply
from stmed.judge.cost import JudgeStats
from stmed.judge.verdict import parse_scores
from stmed.records import dumps, write_json

ENDPOINT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def custom_id(rec_id: str, order: tuple[int, int]) -> str:
    """An opaque id for one request: record ids often hold file paths (``<image path>:<line>``),
    which the judge never sends. It is derived from the record id alone, so replies in any output
    file (``--collect``, ``vllm run-batch``) join back to the input records without other state."""
    digest = hashlib.sha256(str(rec_id).encode("utf-8")).hexdigest()[:16]
    return f"{digest}#{order[0] + 1}>{order[1] + 1}"


def write_request_files(lines: Iterable[str], folder: Path, max_requests: int, max_bytes: int) -> list[Path]:
    """Split into files of at most ``max_requests`` lines and ``max_bytes`` bytes each (streamed:
    each line carries a base64 image, so 10k records would not fit in memory as strings)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("requests-*.jsonl"):
        old.unlink()
    paths: list[Path] = []
    fh, count, size = None, 0, 0
    try:
        for line in lines:
            data = line.encode("utf-8") + b"\n"
            if len(data) > max_bytes:
                raise InputError(f"one batch request is {len(data):,} bytes, above the {max_bytes:,}-byte file limit; lower --max-side")
            if fh is None or count >= max_requests or size + len(data) > max_bytes:
                if fh is not None:
                    fh.close()
                paths.append(folder / f"requests-{len(paths) + 1:04d}.jsonl")
                fh, count, size = open(paths[-1], "wb"), 0, 0
            fh.write(data)
            count, size = count + 1, size + len(data)
    finally:
        if fh is not None:
            fh.close()
    return paths


def read_outputs(paths: list[str | Path]) -> dict[str, tuple[ChatResult | None, str | None]]:
    """custom_id -> (reply, None) or (None, error message), from Batch API output and error files."""
    replies: dict[str, tuple[ChatResult | None, str | None]] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.is_dir():
            raise InputError(f"{path}: is a folder, expected a Batch API output file")
        for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                cid = row["custom_id"]
                if not isinstance(cid, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{path}:{lineno}: not a Batch API output line (needs custom_id)") from None
            resp, err = row.get("response"), row.get("error")
            resp = resp if isinstance(resp, dict) else {}
            body = resp.get("body")
            if not err and resp.get("status_code") == 200 and isinstance(body, dict) and body.get("choices"):
                from stmed.api.openai_client import RequestFailed, result_from_completion

                try:
                    replies[cid] = (result_from_completion(body), None)
                except RequestFailed as e:
                    replies[cid] = (None, f"{path}:{lineno}: {e}")
            elif cid not in replies or replies[cid][0] is None:
                msg = err.get("message") if isinstance(err, dict) else None
                if not msg and isinstance(body, dict) and isinstance(body.get("error"), dict):
                    msg = body["error"].get("message")
                replies[cid] = (None, f"batch request failed: {msg or resp.get('status_code') or 'no reply'}")
    return replies


class BatchRound:
    """One round of Batch API requests on a judge core: cached replies come back at once, the rest
    are spooled to disk (each line holds a base64 image), written as request files, sent, polled
    and read back (``send``), then claimed one by one (``reply``)."""

    def __init__(self, core: JudgeCore, opts: BatchOptions):
        self.core, self.opts = core, opts
        opts.folder.mkdir(parents=True, exist_ok=True)
        self.spool_path = opts.folder / "pending.tmp"
        self.spool, self.lines = open(self.spool_path, "w", encoding="utf-8"), 0
        self.replies: dict = {}

    def add(self, req: ChatRequest, cid: str, parse) -> Reply | str:
        """The cached reply to ``req``, or ``cid`` once its request line is spooled."""
        hit = self.core.cached(req, parse)
        if hit is not None:
            return hit
        self.spool.write(dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT,
                                "body": request_body(req, self.core.model)}) + "\n")
        self.lines += 1
        return cid

    def send(self) -> bool:
        """Send what was spooled and read the replies; False when ``prepare_only`` stopped after the files."""
        self.spool.close()
        opts = self.opts
        try:
            if opts.collected is not None:
                self.replies = opts.collected
            elif self.lines:
                with open(self.spool_path, encoding="utf-8") as lines:
                    files = write_request_files((x.rstrip("\n") for x in lines), opts.folder, opts.max_requests,
                                                opts.max_bytes)
                self.spool_path.unlink()
                if opts.prepare_only:
                    print(f"stmed judge: wrote {self.lines} requests in {len(files)} file(s) under {opts.folder}/; "
                          f"submit them, or run `vllm run-batch -i FILE -o OUT`, then --collect OUT", file=sys.stderr)
                    return False
                self.replies = read_outputs(submit_and_wait(opts, files))
        finally:
            self.spool_path.unlink(missing_ok=True)
        return True

    def reply(self, req: ChatRequest, cid: str, parse) -> Reply:
        """The batch's reply to ``cid`` (counted, and cached when it parses), or one with its error."""
        result, error = self.replies.get(cid, (None, f"no reply for {cid} in the batch output"))
        if result is None:
            return Reply(None, None, "batch", error=str(error))
        return self.core.paid(req, result, parse, "batch")


def run_batch(cfg: JudgeConfig, records: list, stats: JudgeStats, cache) -> Iterator[Outcome]:
    core = JudgeCore(cfg.judge_model, "batch", client=cfg.client_settings(), cache=cache, stats=stats)
    batch = BatchRound(core, BatchOptions(
        Path(cfg.batch_dir or "stmed-judge.batch"), cfg.client_settings(), cfg.max_batch_requests, cfg.max_batch_bytes,
        cfg.poll_interval, cfg.prepare_only,
        collected=(cfg.collected if cfg.collected is not None else read_outputs(cfg.collect)) if cfg.collect else None))
    plans = []  # (prepared record, {order: judgement or (request, custom id)})
    for rec in records:
        prep = prepare_or_decide(rec, cfg, stats)
        if isinstance(prep, Outcome):
            yield prep
            continue
        plan = {}
        for order in orders(len(prep.answers), cfg.policy):
            req = request_for(prep, order, cfg)
            got = batch.add(req, custom_id(prep.record["id"], order), parse_scores)
            plan[order] = Judgement(order, got.value, got.text, got.source) if isinstance(got, Reply) else (req, got)
        prep.image_url = None  # the request line holds the pixels now; keep memory flat
        plans.append((prep, plan))
    if not batch.send():
        return
    for prep, plan in plans:
        yield _finish(prep, plan, batch, cfg, stats)


def _finish(prep, plan: dict, batch: BatchRound, cfg: JudgeConfig, stats: JudgeStats) -> Outcome:
    judgements = []
    for order, item in plan.items():
        if not isinstance(item, tuple):
            judgements.append(item)
            continue
        req, cid = item
        got = batch.reply(req, cid, parse_scores)
        if got.error is not None:
            return Outcome.failed(prep.record, got.error)
        if got.value is None:
            return Outcome.failed(prep.record, "judge reply has no two scores", [got.text])
        judgements.append(Judgement(order, got.value, got.text, got.source))
    return outcome(prep, decide(judgements, len(prep.answers), cfg.policy, cfg.min_margin), judgements, cfg, stats)


def _retrying(fn, *args, **kwargs):
    """Batch control calls get the same transient-error policy as chat requests."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

    for attempt in Retrying(retry=retry_if_exception(is_transient), stop=stop_after_attempt(6),
                            wait=wait_random_exponential(multiplier=1, max=30), reraise=True):
        with attempt:
            return fn(*args, **kwargs)


def submit_and_wait(opts: BatchOptions, files: list[Path]) -> list[Path]:
    """Upload, create, poll and download; returns the downloaded output and error files."""
    from openai import OpenAI, OpenAIError

    settings, folder = opts.client, opts.folder
    key = api_key_from_env(settings.api_key_env, settings.base_url)
    client = OpenAI(api_key=key, base_url=settings.base_url, max_retries=0, timeout=settings.timeout)
    state_path = folder / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    try:
        for f in files:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            if state.get(f.name, {}).get("sha256") == digest:
                continue  # submitted by an earlier run that was stopped while polling
            with open(f, "rb") as fh:
                uploaded = _retrying(client.files.create, file=fh, purpose="batch")
            batch = _retrying(client.batches.create, input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")
            state[f.name] = {"sha256": digest, "batch_id": batch.id}
            write_json(state_path, state, indent=1)  # whole or not at all: it is what a killed run resumes from
            print(f"stmed judge: submitted {f.name} as {batch.id}", file=sys.stderr)
        out = []
        for f in files:
            out += _wait_one(client, state[f.name]["batch_id"], folder, f.stem.replace("requests", ""), opts.poll_interval)
        return out
    except OpenAIError as e:
        raise InputError(redact(f"batch API call failed ({describe(e)})", key)) from None
    finally:
        client.close()


def _wait_one(client, batch_id: str, folder: Path, suffix: str, interval: float) -> list[Path]:
    last = None
    while True:
        b = _retrying(client.batches.retrieve, batch_id)
        rc = b.request_counts
        seen = (b.status, rc.completed if rc else 0, rc.failed if rc else 0)
        if seen != last:  # one line per change: readable in a log file as well as a terminal
            done = f" {rc.completed + rc.failed}/{rc.total}" if rc and rc.total else ""
            print(f"stmed judge: {batch_id} {b.status}{done}", file=sys.stderr)
            last = seen
        if b.status in TERMINAL:
            break
        time.sleep(interval)
    paths = []
    for kind, fid in (("output", b.output_file_id), ("errors", b.error_file_id)):
        if fid:
            p = folder / f"{kind}{suffix}.jsonl"
            p.write_bytes(_retrying(client.files.content, fid).read())
            paths.append(p)
    if b.status != "completed":
        print(f"stmed judge: {batch_id} ended {b.status}; records without a reply go to the errors file", file=sys.stderr)
    return paths
