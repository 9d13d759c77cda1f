"""Judge throughput against the loopback OpenAI server with 200 ms replies.

Measures requests/s at concurrency 1 and 32 in the same run (concurrency 1 over a subset: all
500 records one at a time would take 200 s+), then judges all 500 records at concurrency 32
with 10% injected faults and counts records lost (neither a pair, a skip nor an error).
Ends with one line of JSON; the headline concurrency-32/concurrency-1 ratio is under "ratio".

    .venv/bin/python tools/bench_judge.py [--records 500] [--serial-records 25] [--delay 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from judge_data import make_records, read_jsonl  # noqa: E402
from openai_server import FAULTS, serve  # noqa: E402
from stmed.judge.cost import PRICES  # noqa: E402
from stmed.stages.judge import JudgeConfig, judge as judge_records  # noqa: E402
from stmed.stages.runner import Files  # noqa: E402  # noqa: E402
from stmed.records import read_records  # noqa: E402


def judge(folder: Path, name: str, records, srv, concurrency: int) -> tuple[float, int]:
    cfg = JudgeConfig(judge_model="gpt-4o", base_url=srv.base_url, concurrency=concurrency, timeout=1.0,
                      backoff_initial=0.1, max_request_seconds=60)
    before = srv.stats.chat
    t = time.perf_counter()
    judge_records(cfg, records, Files(str(folder / f"{name}.jsonl"), overwrite=True, quiet=True), prices=dict(PRICES))
    return time.perf_counter() - t, srv.stats.chat - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=500)
    ap.add_argument("--serial-records", type=int, default=25, help="records for the concurrency-1 run")
    ap.add_argument("--delay", type=float, default=0.2, help="server seconds per reply")
    ap.add_argument("--fault-rate", type=float, default=0.10)
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_records(folder / "in.jsonl", args.records)
        records = read_records(folder / "in.jsonl")
        with serve(delay=args.delay) as srv:
            s1, n1 = judge(folder, "c1", records[: args.serial_records], srv, 1)
            s32, n32 = judge(folder, "c32", records, srv, 32)
        rate1, rate32 = n1 / s1, n32 / s32
        print(f"concurrency 1:  {n1} requests ({args.serial_records} records) in {s1:.1f}s = {rate1:.2f} req/s", file=sys.stderr)
        print(f"concurrency 32: {n32} requests ({args.records} records) in {s32:.1f}s = {rate32:.2f} req/s", file=sys.stderr)
        faults = {f: args.fault_rate / len(FAULTS) for f in FAULTS}
        with serve(delay=args.delay, faults=faults, slow_seconds=2.0, seed=7) as srv:
            sf, nf = judge(folder, "faults", records, srv, 32)
            injected = sum(srv.stats.faults.values())
        landed = [r["id"] for kind in ("", ".skipped", ".errors") for r in read_jsonl(folder / f"faults{kind}.jsonl")]
        counts = Counter(landed)
        lost = sum(1 for r in records if counts[r["id"]] == 0)
        duplicated = sum(1 for c in counts.values() if c > 1)
        failed = len(read_jsonl(folder / "faults.errors.jsonl"))
        print(f"faults: {injected} of {nf} requests faulted ({injected / max(nf, 1):.0%}); {args.records} records in {sf:.1f}s: "
              f"lost {lost}, duplicated {duplicated}, reported failed {failed}", file=sys.stderr)
    print(json.dumps({"bench": "judge", "delay_s": args.delay, "records": args.records,
                      "serial_records": args.serial_records, "req_per_s_c1": round(rate1, 2),
                      "req_per_s_c32": round(rate32, 2), "ratio": round(rate32 / rate1, 1),
                      "fault_rate": args.fault_rate, "faults_injected": injected, "lost": lost,
                      "duplicated": duplicated, "failed_reported": failed}))


if __name__ == "__main__":
    main()
