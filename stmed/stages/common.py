"""Helpers every generation stage shares: record images, stable seeds, chunked ordered output."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from stmed.corrupt import Corruption
from stmed.errors import RecordError
from stmed.images import load_image, prepare, resolve_path, short_path
from stmed.records import Record

T = TypeVar("T")


def record_image(rec: Record, image_root: Path | None = None, pad_square: bool = False, max_pixels: int | None = None,
                 corrupt: Corruption | None = None):
    """The record's image as RGB (optionally corrupted, padded square, bounded in pixels), or
    RecordError naming file:line."""
    image = rec.get("image")
    if image is not None and not isinstance(image, str):
        raise RecordError(f"{rec.where}: field 'image' must be str, got {type(image).__name__}")
    if not image:
        raise RecordError(f"{rec.where}: missing field 'image'")
    try:
        path = resolve_path(image, rec.base_dir, image_root)
        stat = path.stat()
        return _load(str(path), stat.st_mtime_ns, stat.st_size, pad_square, max_pixels, corrupt)
    except FileNotFoundError:
        raise RecordError(f"{rec.where}: {path}: image not found") from None
    except RecordError as e:  # an image from a folder input: its "where" is the image's path already
        raise RecordError(str(e) if str(e).startswith(f"{rec.where}: ") else f"{rec.where}: {e}") from None
    except (OSError, ValueError) as e:  # a name too long or holding a NUL byte, a permission denied
        raise RecordError(f"{rec.where}: {short_path(image)!r}: cannot read the image "
                          f"({getattr(e, 'strerror', None) or e})") from None


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int, pad_square: bool, max_pixels: int | None,
          corrupt: Corruption | None = None):
    """Questions about one image sit together: decode it once, not once per question. Keyed by
    modification time and size so a rewritten file is read again; small, as images can be big.
    A corruption works on the decoded pixels, before padding and resizing, as every stage rebuilds it."""
    img, _ = load_image(path)
    if corrupt is not None:
        img = corrupt.apply(img)
    return prepare(img, pad_square, max_pixels)


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
