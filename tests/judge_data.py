"""Answer records for the judge tests and benchmark, with answers whose word counts fix the
loopback server's scores (it scores an answer by its word count, capped to 1..10)."""

from __future__ import annotations

import json
import random
from pathlib import Path

IMAGES = sorted((Path(__file__).resolve().parents[1] / "examples" / "images").glob("*.jpg"))


def answer(words: int, tag: str = "finding") -> str:
    return " ".join([tag] * words)


def make_records(path: Path, n: int, *, seed: int = 0, n_answers: int = 2) -> list[dict]:
    """n records with random answer lengths (ties included); written as JSONL to ``path``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answers = [{"text": answer(rng.randint(1, 10), f"a{k}"), "seed": 40 + 2 * k} for k in range(n_answers)]
        rows.append({"id": f"q{i}", "image": str(IMAGES[i % len(IMAGES)]), "question": f"What does image {i} show?",
                     "answers": answers, "source": "test"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
