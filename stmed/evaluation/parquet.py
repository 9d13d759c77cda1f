"""Hugging Face parquet exports (columns ``image`` {bytes, path}, ``question``, ``answer``, ...).

A PathVQA-sized file is hundreds of megabytes of image bytes, so nothing reads it whole: the
text columns are read a batch at a time, and an item's image is written to a content-addressed
cache folder only when a run needs it (``materialize_images``), reading just its row group.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from stmed.errors import InputError
from stmed.evaluation.loaders import Context, question_kind, make_item
from stmed.paths import cache_root
from stmed.records import Record

def _parquet_files(path: Path, split: str) -> list[Path]:
    """A Hugging Face split may be sharded: test-00000-of-00002.parquet and its siblings, or with
    the hash suffix ``datasets`` adds (test-00000-of-00003-ce5bd56182ee825e.parquet)."""
    m = re.match(r"(.+)-\d{5}-of-(\d{5})(-[0-9a-f]+)?\.parquet$", path.name)
    if not m:
        return [path]
    shard = re.compile(re.escape(m.group(1)) + r"-\d{5}-of-" + m.group(2) + r"(-[0-9a-f]+)?\.parquet$")
    return sorted(p for p in path.parent.iterdir() if shard.match(p.name))


PARQUET_BATCH = 64  # rows per read: memory stays bounded whatever the file's size


def _open_parquet(file: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading parquet needs pyarrow: pip install pyarrow") from None
    try:  # buffer_size streams a column chunk page by page instead of reading it whole
        return pq.ParquetFile(file, buffer_size=1 << 20)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise InputError(f"{file}: not a readable parquet file ({type(e).__name__}: {e})") from None


def load_parquet(ctx: Context) -> list[Record]:
    """Hugging Face exports. Only the text columns are read here, batch by batch; each item's
    image stays in the file until ``materialize_images`` writes the ones a run needs."""
    base = ctx.path.resolve().parent
    out_dir = ctx.image_root or cache_root() / "parquet-images"
    items: list[Record] = []
    for file in _parquet_files(ctx.path, ctx.split):
        pf = _open_parquet(file)
        names = pf.schema_arrow.names
        if "image" not in names:
            raise InputError(f"{file}: no 'image' column (columns: {', '.join(names)})")
        text = [c for c in names if c != "image"]
        i = 0
        try:
            batches = pf.iter_batches(batch_size=PARQUET_BATCH, columns=text)
            for batch in batches:
                for r in batch.to_pylist():
                    where = f"{file}: row {i}"
                    i += 1
                    if ctx.lang != "all" and r.get("q_lang") not in (None, ctx.lang):
                        continue
                    item = make_item(
                        where, base, id=r.get("id", r.get("qid", r.get("question_id", f"{file.stem}:{i - 1}"))),
                        image=f"{file}#row={i - 1}", question=r.get("question"), answer=r.get("answer"),
                        answer_type=r.get("answer_type"),
                        question_type=question_kind(r.get("question_type", r.get("content_type"))))
                    ctx.lazy_images[item["id"]] = (file, i - 1, out_dir)
                    items.append(item)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{file}: row {i}: cannot read ({type(e).__name__}: {e})") from None
    return items


def materialize_images(items: list[Record], lazy: dict) -> int:
    """Write the images of ``items`` that still live in a parquet file to the cache folder and
    point each item at its file. Reads only the row groups that hold them, a batch at a time."""
    wanted: dict[Path, dict[int, list[Record]]] = {}
    for it in items:
        ref = lazy.get(it["id"])
        if ref is not None:
            wanted.setdefault(ref[0], {}).setdefault(ref[1], []).append(it)
    written = 0
    for file, rows in wanted.items():
        out_dir = lazy[rows[min(rows)][0]["id"]][2]
        out_dir.mkdir(parents=True, exist_ok=True)
        pf = _open_parquet(file)
        groups, starts, start = [], [], 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if any(start <= r < start + n for r in rows):
                groups.append(g)
                starts.append(start)
            start += n
        for g, first in zip(groups, starts):
            row = first
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=[g], columns=["image"]):
                column = batch.column(0)
                for k in range(batch.num_rows):
                    if row + k in rows:
                        path = _write_image(column[k].as_py(), out_dir, f"{file}: row {row + k}")
                        for it in rows[row + k]:
                            it["image"] = path
                            lazy.pop(it["id"], None)
                        written += 1
                row += batch.num_rows
    return written


def _write_image(image, out_dir: Path, where: str) -> str:
    """Content-addressed, so repeated images are stored once and a rerun writes nothing."""
    if isinstance(image, dict) and image.get("bytes"):
        data, name = image["bytes"], image.get("path") or ""
    elif isinstance(image, (bytes, bytearray)):
        data, name = bytes(image), ""
    elif isinstance(image, dict) and image.get("path"):
        return str(image["path"])  # an export that points at files instead of holding them
    else:
        raise InputError(f"{where}: 'image' holds neither bytes nor a path")
    suffix = Path(name).suffix.lower() or (".png" if data[:4] == b"\x89PNG" else ".jpg")
    target = out_dir / (hashlib.sha1(data).hexdigest()[:20] + suffix)
    if not target.exists():
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)
