"""Helpers every generation stage shares: stable seeds, chunked ordered output (a record's image
is ``stmed.images.record_image``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def seed_for(base: int, key: str, k: int) -> int:
    """A sample's seed from the run's seed, the record's id and the sample number: stable
    across batch sizes, shards and resumed runs."""
    digest = hashlib.sha256(f"{base}\0{key}\0{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def chunk_size(configured: int | None, backend, rows_per_record: int = 1) -> int:
    """Records per unit of work: enough rows for four full batches, so batch size is never
    capped by the chunk (the chunk is also what a killed run can lose)."""
    if configured:
        return configured
    batch = getattr(backend, "batch_size", 8)
    return max(8, -(-4 * batch // max(rows_per_record, 1)))


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Work is formed in chunks so batches span records, and output keeps input order."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
