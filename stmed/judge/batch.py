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
from typing import TYPE_CHECKING

from stmed.backends import ChatResult
from stmed.backends.openai_client import api_key_from_env, describe, is_transient, redact, request_body
from stmed.errors import InputError
from stmed.judge.cost import JudgeStats
from stmed.judge.common import Outcome, decide, judgement_from, orders, outcome, prepare_or_decide, request_for
from stmed.records import dumps, write_json

if TYPE_CHECKING:
    from stmed.stages.judge import JudgeConfig

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
                from stmed.backends.openai_client import RequestFailed, result_from_completion

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


def run_batch(cfg: JudgeConfig, records: list, stats: JudgeStats, cache) -> Iterator[Outcome]:
    folder = Path(cfg.batch_dir or "stmed-judge.batch")
    plans = []  # (prepared record, {order: judgement or custom id})
    folder.mkdir(parents=True, exist_ok=True)
    spool_path = folder / "pending.tmp"
    spool, n_lines = open(spool_path, "w", encoding="utf-8"), 0
    for rec in records:
        prep = prepare_or_decide(rec, cfg, stats)
        if isinstance(prep, Outcome):
            yield prep
            continue
        plan = {}
        for order in orders(len(prep.answers), cfg.policy):
            req = request_for(prep, order, cfg)
            key = req.cache_key(cfg.judge_model, cfg.base_url)
            hit = cache.get(key)
            if hit is not None and (j := judgement_from(order, hit.text, "cache")) is not None:
                stats.cache_hits += 1
                plan[order] = j
                continue
            cid = custom_id(prep.record["id"], order)
            plan[order] = (cid, key)
            spool.write(dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": request_body(req, cfg.judge_model)}) + "\n")
            n_lines += 1
        prep.image_url = None  # the request line holds the pixels now; keep memory flat
        plans.append((prep, plan))
    spool.close()
    if cfg.collect:
        replies = cfg.collected if cfg.collected is not None else read_outputs(cfg.collect)
    elif n_lines:
        with open(spool_path, encoding="utf-8") as lines:
            files = write_request_files((x.rstrip("\n") for x in lines), folder, cfg.max_batch_requests, cfg.max_batch_bytes)
        spool_path.unlink()
        if cfg.prepare_only:
            print(f"stmed judge: wrote {n_lines} requests in {len(files)} file(s) under {folder}/; "
                  f"submit them, or run `vllm run-batch -i FILE -o OUT`, then --collect OUT", file=sys.stderr)
            return
        replies = read_outputs(submit_and_wait(cfg, files, folder))
    else:
        replies = {}
    spool_path.unlink(missing_ok=True)
    for prep, plan in plans:
        yield _finish(prep, plan, replies, cfg, stats, cache)


def _finish(prep, plan: dict, replies: dict, cfg: JudgeConfig, stats: JudgeStats, cache) -> Outcome:
    judgements = []
    for order, item in plan.items():
        if not isinstance(item, tuple):
            judgements.append(item)
            continue
        cid, key = item
        result, error = replies.get(cid, (None, f"no reply for {cid} in the batch output"))
        if result is None:
            return Outcome.failed(prep.record, str(error))
        stats.requests += 1
        stats.usage.add(result.usage)
        j = judgement_from(order, result.text, "batch")
        if j is None:
            return Outcome.failed(prep.record, "judge reply has no two scores", [result.text])
        cache.put(key, cfg.judge_model, result)
        judgements.append(j)
    return outcome(prep, decide(judgements, len(prep.answers), cfg.policy, cfg.min_margin), judgements, cfg, stats)


def _retrying(fn, *args, **kwargs):
    """Batch control calls get the same transient-error policy as chat requests."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

    for attempt in Retrying(retry=retry_if_exception(is_transient), stop=stop_after_attempt(6),
                            wait=wait_random_exponential(multiplier=1, max=30), reraise=True):
        with attempt:
            return fn(*args, **kwargs)


def submit_and_wait(cfg: JudgeConfig, files: list[Path], folder: Path) -> list[Path]:
    """Upload, create, poll and download; returns the downloaded output and error files."""
    from openai import OpenAI, OpenAIError

    key = api_key_from_env(cfg.api_key_env, cfg.base_url)
    client = OpenAI(api_key=key, base_url=cfg.base_url, max_retries=0, timeout=cfg.timeout)
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
            out += _wait_one(client, state[f.name]["batch_id"], folder, f.stem.replace("requests", ""), cfg.poll_interval)
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
