"""Benchmark: peak memory of `stmed eval` over a PathVQA-sized parquet file (target: under 1 GB).

Builds a synthetic file shaped like the Hugging Face PathVQA export (columns image {bytes, path},
question, answer; row groups of 100 rows, as `datasets` writes image data): 6,719 rows, as many
as the mirror's test split, over 858 distinct noise JPEGs, about 400 MB. Then measures, each in a
fresh process, the peak resident memory (VmHWM, or ru_maxrss where there is no /proc) of:

* old: how stmed read such a file before: ``pyarrow.parquet.read_table(file).to_pylist()``, every
  row's image bytes in Python objects at once, every image written to the cache, then --limit;
* new, scoring: the real command, ``stmed eval --bench pathvqa --data FILE --predictions P --limit N``;
* new, generating: what a generating run does before its model sees an image (load, --limit N,
  then write the images of those N items); ``--generate`` also runs the real command with a tiny
  random model on the first 50 items, and the same run on the carried VQA-RAD JSON as a baseline
  (torch and transformers alone take most of that).

Each mode runs at --limit 50 and over the whole file. The last line is JSON; ``ratio`` is the
old way's peak over the new way's at --limit 50 (scoring).
Usage: python tools/bench_eval_memory.py [--rows 6719] [--image-kb 61] [--generate]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("what", "is", "present", "this", "image", "does", "the", "show", "tissue", "nuclei", "stain",
         "liver", "kidney", "cells", "fibrosis", "necrosis", "inflammation", "vessel", "lumen", "gland")


def build(path: Path, rows: int, images: int, image_kb: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    side = int((image_kb * 1024 / 0.92) ** 0.5)  # a noise JPEG at quality 90: about 0.92 bytes per pixel
    pool = []
    for _ in range(images):
        buf = io.BytesIO()
        Image.fromarray(nrng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        pool.append(buf.getvalue())
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("question", pa.string()), ("answer", pa.string())])
    # no dictionary for the images: like the Hub files, each row holds its image's bytes again
    with pq.ParquetWriter(path, schema, use_dictionary=["question", "answer"]) as writer:
        for start in range(0, rows, 100):
            n = min(100, rows - start)
            idx = [(start + k) * images // rows for k in range(n)]  # rows of one image sit together
            writer.write_table(pa.table({
                "image": [{"bytes": pool[i], "path": None} for i in idx],
                "question": [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) + "?" for _ in idx],
                "answer": [rng.choice(("yes", "no", "fibrosis", "the liver", "necrosis")) for _ in idx],
            }, schema=schema))


# ---------------------------------------------------------------- children: one measurement each


def child_old(file: str, limit: int) -> None:
    import pyarrow.parquet as pq

    from stmed.evaluation.loaders import make_item
    from stmed.evaluation.parquet import _write_image
    from stmed.paths import cache_root
    from stmed.records import select

    out_dir = cache_root() / "parquet-images"
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for i, r in enumerate(pq.read_table(file).to_pylist()):  # the old loader, line for line
        where = f"{file}: row {i}"
        items.append(make_item(where, Path(file).parent, id=f"test:{i}", image=_write_image(r["image"], out_dir, where),
                               question=r.get("question"), answer=r.get("answer")))
    assert len(select(items, limit=limit)) == min(limit, len(items))


def child_generate_data(file: str, limit: int) -> None:
    from stmed.evaluation.benchmarks import load_benchmark
    from stmed.records import select

    data = load_benchmark("pathvqa", file)
    items = select(data.items, limit=limit)
    data.materialize(items)
    assert all(os.path.isfile(it["image"]) for it in items)


def child_cli(argv: list[str]) -> None:
    from stmed.cli import main

    sys.argv = ["stmed", *argv]
    try:
        main()
    except SystemExit as e:
        assert not e.code, f"stmed exited with {e.code}"


def own_peak_mb() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec; ru_maxrss would carry
    over the forking parent's peak (on Linux), so it is only the fallback."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def peak_mb(args: list[str], env: dict) -> float:
    """Run one child mode in a fresh process; its own peak RSS in MB."""
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        sys.exit(f"bench_eval_memory: child {args[:2]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # one measurement, in this fresh process
        mode, rest = sys.argv[2], sys.argv[3:]
        {"old": lambda: child_old(rest[0], int(rest[1])), "data": lambda: child_generate_data(rest[0], int(rest[1])),
         "cli": lambda: child_cli(rest)}[mode]()
        print(json.dumps({"peak_mb": own_peak_mb()}))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6719)
    ap.add_argument("--images", type=int, default=858)
    ap.add_argument("--image-kb", type=int, default=61)
    ap.add_argument("--generate", action="store_true", help="also generate with a tiny random model (first 50 items)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        file = folder / "test-00000-of-00001.parquet"
        build(file, args.rows, args.images, args.image_kb)
        size_mb = file.stat().st_size / 2**20
        with open(folder / "answers.jsonl", "w") as f:
            for i in range(args.rows):
                f.write(json.dumps({"question_id": f"test-00000-of-00001:{i}", "text": "yes, it shows fibrosis"}) + "\n")
        env = {**os.environ, "STMED_CACHE_DIR": str(folder / "cache"), "HF_HUB_OFFLINE": "1"}
        figures: dict[str, float] = {}
        for limit in (50, args.rows):
            tag = "limit50" if limit == 50 else "all"
            figures[f"old_{tag}_mb"] = peak_mb(["old", str(file), str(limit)], env)
            figures[f"new_scoring_{tag}_mb"] = peak_mb(
                ["cli", "eval", "--bench", "pathvqa", "--data", str(file), "--predictions", str(folder / "answers.jsonl"),
                 "--limit", str(limit), "-o", str(folder / f"scored-{tag}.jsonl"), "--bootstrap", "0", "-q"], env)
            figures[f"new_generate_data_{tag}_mb"] = peak_mb(["data", str(file), str(limit)], env)
        if args.generate:
            from make_tiny_model import build as build_tiny  # tools/ is this script's folder

            tiny = build_tiny(folder / "tiny", seed=0)
            figures["new_generate_tiny_limit50_mb"] = peak_mb(
                ["cli", "eval", "--bench", "pathvqa", "--data", str(file), "-m", str(tiny), "--limit", "50",
                 "--max-new-tokens", "4", "--device", "cpu", "-o", str(folder / "gen.jsonl"), "--bootstrap", "0", "-q"], env)
            # the same run on the carried VQA-RAD JSON: what the model and libraries cost without a big file
            figures["baseline_generate_tiny_vqa_rad_limit50_mb"] = peak_mb(
                ["cli", "eval", "--bench", "vqa-rad", "-m", str(tiny), "--limit", "50", "--max-new-tokens", "4",
                 "--device", "cpu", "-o", str(folder / "gen-rad.jsonl"), "--bootstrap", "0", "-q"], env)
    for k, v in figures.items():
        print(f"{k:42s} {v:8.0f} MB")
    worst_new = max(v for k, v in figures.items() if k.startswith("new_"))  # baseline_: not the file's doing
    print(f"file {size_mb:.0f} MB, {args.rows} rows; worst new-way peak {worst_new:.0f} MB "
          f"({'under' if worst_new < 1024 else 'OVER'} the 1 GB target)")
    print(json.dumps({"bench": "eval_memory", "rows": args.rows, "file_mb": round(size_mb, 1),
                      **{k: round(v, 1) for k, v in figures.items()}, "target_mb": 1024,
                      "ratio": round(figures["old_limit50_mb"] / figures["new_scoring_limit50_mb"], 2)}))


if __name__ == "__main__":
    main()
