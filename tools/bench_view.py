"""How big and how fast is a `stmed view` page of 10,000 records?

    python tools/bench_view.py [--records 10000] [--per-image 5] [--out /tmp/bench-view]

Writes a realistic judge output (pairs with two ~40-word answers, scores in both orders and a
reason each; one image per 5 questions, cycling over the VQA-RAD images in examples/data),
builds the page, and prints its size, the build time and, where headless Chromium is
installed, how long Chromium takes from navigation to the first page of cards on screen (the
page records it in ``data-ready-ms``), next to an empty page, and with a search over every record.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("the lesion is in the right upper lobe with no effusion and a normal heart size there is mild "
         "opacity consistent with consolidation the mediastinum is midline and the bones are intact").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_records(path: Path, n: int, per_image: int, images: list[Path]) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            img = images[(i // per_image) % len(images)]
            a, b = sentence(rng, 40), sentence(rng, 40)
            s1, s2 = rng.randint(3, 9), rng.randint(3, 9)
            rec = {"id": f"img{i // per_image}:q{i % per_image}", "image_id": f"img{i // per_image}", "image": str(img),
                   "question": sentence(rng, 12)[:-1] + "?", "description": sentence(rng, 30),
                   "answers": [{"text": a, "seed": 40}, {"text": b, "seed": 42}]}
            if s1 != s2:
                rec.update(chosen=a if s1 > s2 else b, rejected=b if s1 > s2 else a, margin=abs(s1 - s2))
            else:
                rec.update(skip="tie", margin=0.0)
            rec["judge"] = {"model": "gpt-4o", "policy": "swap", "scores": [s1, s2], "swapped_scores": [s2, s1],
                            "raw": [f"{s1} {s2}\n{sentence(rng, 25)}", f"{s2} {s1}\n{sentence(rng, 25)}"], "pair": [1, 2]}
            f.write(json.dumps(rec) + "\n")


def chromium_seconds(page: Path, work: Path, fragment: str = "") -> float | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={work / 'chromium'}", "--dump-dom", page.as_uri() + fragment]
    best = None
    for _ in range(3):
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
        found = re.search(r'data-ready-ms="(\d+)"', dom)
        assert found, "the page did not render its cards"
        took = int(found.group(1)) / 1000
        best = took if best is None else min(best, took)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--per-image", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from stmed.view import ViewConfig, build_page, write_page

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-view-"))
    work.mkdir(parents=True, exist_ok=True)
    images = sorted((ROOT / "examples" / "data" / "vqa_rad" / "images").glob("*.jpg")) or \
        sorted((ROOT / "examples" / "images").glob("*.jpg"))
    records = work / "pairs.jsonl"
    make_records(records, args.records, args.per_image, images)
    start = time.perf_counter()
    page, totals = build_page(ViewConfig([str(records)], quiet=True))
    built = time.perf_counter() - start
    write_page(work / "view.html", page)
    empty = work / "empty.jsonl"
    empty.write_text(json.dumps({"id": "x", "question": "?"}) + "\n")
    write_page(work / "empty.html", build_page(ViewConfig([str(empty)], quiet=True))[0])
    size = (work / "view.html").stat().st_size
    print(f"{args.records:,} records, {totals['images']:,} images ({len(images)} distinct files): "
          f"page {size / 1e6:.1f} MB, built in {built:.1f} s", flush=True)
    full, base = chromium_seconds(work / "view.html", work), chromium_seconds(work / "empty.html", work)
    if full is None:
        print("chromium not installed: no load time")
        return
    search = chromium_seconds(work / "view.html", work, "#q=upper+lobe&o=chosen")
    print(f"headless Chromium, load and show page 1 (best of 3): {full:.2f} s (an empty page: {base:.2f} s); "
          f"opened with a search over every record and the chosen filter: {search:.2f} s")


if __name__ == "__main__":
    main()
