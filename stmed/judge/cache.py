"""Every judge reply, kept in SQLite so that a rerun never pays for the same request twice.

The key is ``ChatRequest.cache_key``: a sha256 of the model, the messages (with the image's hash
in place of its bytes) and the sampling parameters. Neither the key nor the stored row holds the
API key, the base URL or any file path. WAL mode lets shards on one machine share a cache file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from stmed.api import ChatResult, Usage
from stmed.errors import InputError
from stmed.paths import cache_root

MIGRATIONS = [
    """CREATE TABLE replies (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        texts TEXT NOT NULL,            -- JSON list of reply texts
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        created REAL NOT NULL
    )""",
]


def default_cache_path() -> Path:
    """``judge-cache.sqlite`` under the cache root (stmed.paths: ``$STMED_CACHE_DIR``)."""
    return cache_root() / "judge-cache.sqlite"


class ReplyCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.hits = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path}: cannot use as a judge cache ({e})") from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for n, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            self.db.execute(sql)
            self.db.execute(f"PRAGMA user_version = {n}")

    def get(self, key: str) -> ChatResult | None:
        row = self.db.execute(
            "SELECT texts, prompt_tokens, completion_tokens FROM replies WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        self.hits += 1
        return ChatResult(json.loads(row[0]), Usage(row[1], row[2]), cached=True)

    def put(self, key: str, model: str, result: ChatResult) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
            (key, model, json.dumps(result.texts, ensure_ascii=False), result.usage.prompt_tokens,
             result.usage.completion_tokens, time.time()),
        )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class NoCache:
    """``--no-cache``: the same interface, remembering nothing."""

    hits = 0

    def get(self, key: str) -> None:
        return None

    def put(self, key: str, model: str, result: ChatResult) -> None:
        pass

    def close(self) -> None:
        pass
