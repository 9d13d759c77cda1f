"""Benchmark loaders: every file format users bring for VQA-RAD, SLAKE and PathVQA (DESIGN.md 6).

A loader turns a file into items ``{"id", "image", "question", "answer", "answer_type",
"question_type"?}`` with ``image`` an absolute path. The format is detected from the file
(``--format`` overrides); the benchmark only says which split and counts to expect.
``answer_type`` comes from the data wherever it exists; where it does not (Hugging Face
parquet, PathVQA pickles) a yes/no answer means CLOSED and the item says
``"answer_type_derived": true``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stmed.errors import InputError, did_you_mean
from stmed.evaluation import loaders, parquet, sources
from stmed.records import Record, file_sha256


@dataclass(frozen=True)
class Benchmark:
    name: str
    version: str  # bump when items or their selection change; copied into every summary
    description: str
    files: tuple[str, ...] = ()  # what to look for when --data is a folder, best first
    expected: dict = field(default_factory=dict)  # (split, lang) -> (total, closed, open)
    closed_is_yes_no: bool = False  # the official split itself defines closed as a yes/no answer


BENCHMARKS: dict[str, Benchmark] = {}


def register(bench: Benchmark) -> Benchmark:
    BENCHMARKS[bench.name] = bench
    return bench


register(Benchmark(
    "vqa-rad", "1", "VQA-RAD (Lau et al. 2018): radiology; test = phrase_type test_freeform/test_para",
    files=("VQA_RAD Dataset Public.json", "testset.json", "test.json", "test.jsonl"),
    expected={("test", "en"): (451, 272, 179)},
))
register(Benchmark(
    "slake", "1", "SLAKE 1.0 (Liu et al. 2021): radiology, English and Chinese; English by default",
    files=("test.json", "test.jsonl"),
    expected={("test", "en"): (1061, 416, 645)},
))
register(Benchmark(
    "pathvqa", "1", "PathVQA (He et al. 2020): pathology; official test 6761, Hugging Face mirror 6719",
    files=("qas/test/test_qa.pkl", "test_qa.pkl", "test_vqa.pkl", "test.json", "test.jsonl"),
    expected={("test", "en"): (6761, 3391, 3370)},
    closed_is_yes_no=True,
))
register(Benchmark("jsonl", "1", "your own items: JSONL of {id, image, question, answer, answer_type}"))


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise InputError(f"--bench {name!r}: unknown benchmark{did_you_mean(name, BENCHMARKS)}; choose from {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


@dataclass
class BenchData:
    bench: Benchmark
    format: str
    path: Path  # the file the items came from (the first one, for split parquet files)
    sha256: str  # of the file bytes, so a summary names exactly what was scored
    split: str
    lang: str
    items: list[Record]
    notes: list[str] = field(default_factory=list)
    source: dict = field(default_factory=lambda: {"kind": "file"})  # bundled, hub (repo, commit, hashes) or file
    standard: str | None = None  # "official" or "hub-mirror" when the counts match that split's
    lazy_images: dict = field(default_factory=dict)  # parquet images not yet written (parquet.materialize_images)

    def counts(self) -> dict:
        c = Counter(it["answer_type"] for it in self.items)
        return {"total": len(self.items), "closed": c.get("CLOSED", 0), "open": c.get("OPEN", 0)}

    def items_sha256(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps([it["id"], it["question"], it["answer"], it["answer_type"]], ensure_ascii=False).encode())
        return h.hexdigest()

    def materialize(self, items: list[Record]) -> int:
        """Give ``items`` real image files (parquet images are written only for the items a run uses)."""
        return parquet.materialize_images(items, self.lazy_images)

    def describe(self) -> dict:
        want = self.bench.expected.get((self.split, self.lang))
        return {
            "bench": self.bench.name, "bench_version": self.bench.version, "format": self.format,
            "path": str(self.path), "sha256": self.sha256, "items_sha256": self.items_sha256(),
            "split": self.split, "lang": self.lang, "counts": self.counts(), "source": self.source,
            "expected": dict(zip(("total", "closed", "open"), want)) if want else None,
            "standard": self.standard, "notes": self.notes,
        }


def load_benchmark(bench: str, data: str | Path | None = None, *, fmt: str | None = None, split: str = "test",
                   lang: str = "en", image_root: Path | None = None) -> BenchData:
    """Items of one benchmark split from a file or folder (or, without one, the bundled or
    Hub copy: see sources.py), or one InputError saying what is wrong."""
    spec = get_benchmark(bench)
    if lang not in ("en", "zh", "all"):
        raise InputError(f"--lang {lang!r}: choose en, zh or all")
    src = None
    if data is None:
        if bench not in sources.BUNDLED and bench not in sources.HUB:
            raise InputError(f"--bench {bench} needs --data FILE")
        src = sources.resolve(bench, split, lang)
        path = src.path
    else:
        path = find_data_file(spec, Path(data), split)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: unknown format{did_you_mean(fmt, FORMATS)}; choose from {', '.join(FORMATS)}")
    ctx = loaders.Context(path=path, split=split, lang=lang, image_root=image_root)
    items = FORMATS[fmt](ctx)
    if not items:
        raise InputError(f"{path}: no {split} items in this file (format {fmt}, lang {lang})")
    _check_unique(items, path)
    sha = src.sha256 if src is not None and src.sha256 else file_sha256(path)
    out = BenchData(spec, fmt, path, sha, split, lang, items, list(ctx.notes),
                    lazy_images=ctx.lazy_images)
    if src is not None:
        out.source = src.describe()
    _answer_types(out)
    _check_counts(out, src)
    return out


def _answer_types(out: BenchData) -> None:
    """Recover missing answer types from the official release where the items join to it."""
    derived = [it for it in out.items if it.get("answer_type_derived")]
    if not derived:
        return
    release = sources.BUNDLED_ROOT / sources.BUNDLED["vqa-rad"]
    if out.bench.name == "vqa-rad" and release.is_file():
        n = recover_answer_types(derived, release)
        out.notes.append(f"answer_type recovered from the official release ({release.name}) for {n} of "
                         f"{len(derived)} items without one")
        derived = [it for it in derived if it.get("answer_type_derived")]
        if derived:
            out.notes.append(f"answer_type derived for {len(derived)} items that do not join to the release "
                             "(question and answer text): a yes/no answer is CLOSED")
    elif out.bench.closed_is_yes_no:
        out.notes.append(f"answer_type set for {len(derived)} items: CLOSED = a yes/no answer, as {out.bench.name}'s "
                         "official release defines its yes/no questions (no official file here to join to)")
    else:
        out.notes.append(f"answer_type derived for {len(derived)} items: a yes/no answer is CLOSED "
                         "(no official release here to recover the data's own types from)")


def _join_key(question, answer) -> tuple[str, str]:
    return " ".join(str(question).lower().split()), " ".join(str(answer).lower().split())


def recover_answer_types(items: list[Record], release: Path) -> int:
    """Set answer_type from the VQA-RAD release for items whose (question, answer) text has one
    type there; returns how many were set. Items that do not join keep the derived type."""
    types: dict[tuple[str, str], set[str]] = {}
    for i, r in enumerate(loaders.read_json_list(release)):
        key = _join_key(r.get("question"), r.get("answer"))
        types.setdefault(key, set()).add(loaders.answer_type_of(r.get("answer_type"), f"{release}: item {i}"))
    n = 0
    for it in items:
        found = types.get(_join_key(it["question"], it["answer"]), set())
        if len(found) == 1:
            it["answer_type"] = next(iter(found))
            it["answer_type_source"] = "release"
            del it["answer_type_derived"]
            n += 1
    return n


def _check_counts(out: BenchData, src) -> None:
    want = out.bench.expected.get((out.split, out.lang))
    if not want:
        return
    got = out.counts()
    typed = out.bench.closed_is_yes_no or not any(it.get("answer_type_derived") for it in out.items)
    if (got["total"], got["closed"], got["open"]) == want and typed:
        out.standard = "official"
        return
    mirror = sources.HUB.get(out.bench.name)
    if mirror and out.format == "parquet" and got["total"] == mirror.rows != want[0]:
        out.standard = "hub-mirror"
        out.notes.append(f"{mirror.note or mirror.repo_id}; closed/open cannot be checked against the official counts")
        return
    if got["total"] == want[0] and not typed:
        out.notes.append(f"{want[0]} items as in the standard {out.bench.name} {out.split} split; with derived answer "
                         f"types {got['closed']} closed + {got['open']} open (official: {want[1]} + {want[2]})")
        return
    out.notes.append(f"expected {want[0]} items ({want[1]} closed + {want[2]} open) for the standard "
                     f"{out.bench.name} {out.split} split, got {got['total']} ({got['closed']} + {got['open']})")


def find_data_file(spec: Benchmark, data: Path, split: str) -> Path:
    if not data.exists():
        raise InputError(f"--data {data}: no such file or folder")
    if data.is_file():
        return data
    candidates = [data / name for name in spec.files]
    candidates += sorted(data.glob(f"{split}-*.parquet")) + sorted(data.glob(f"data/{split}-*.parquet"))
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(f"--data {data}: folder holds none of the files {spec.name} expects "
                     f"({', '.join(spec.files) or 'a JSONL file'} or {split}-*.parquet); pass the file itself")


def detect_format(path: Path) -> str:
    """The format of a benchmark file, from its suffix and, for JSON, the keys of its first row."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".pkl", ".pickle"):
        return "pathvqa-pkl"
    if suffix == ".jsonl":
        return "jsonl"
    with open(path, "rb") as f:
        head = f.read(1 << 16).lstrip()
    if not head.startswith(b"["):
        return "jsonl"  # a JSONL file named .json
    rows = loaders.read_json_list(path)
    keys = set(rows[0]) if rows and isinstance(rows[0], dict) else set()
    for fmt, needs in _SIGNATURES:
        if needs <= keys:
            return fmt
    raise InputError(f"{path}: cannot tell the benchmark format from its first row (keys: "
                     f"{', '.join(sorted(keys)) or 'none'}); pass --format, one of {', '.join(FORMATS)}")


# First match wins: the VQA-RAD release has every MEVF key plus its own.
_SIGNATURES = [
    ("llava-med", {"conversations"}),
    ("slake", {"img_name", "q_lang"}),
    ("vqa-rad", {"phrase_type", "image_name", "qid_linked_id"}),
    ("mevf", {"phrase_type", "image_name"}),
    ("pathvqa-lxmert", {"img_id", "sentf"}),
    ("pathvqa-lxmert", {"img_id", "sent"}),
    ("jsonl", {"image", "question", "answer"}),
]

FORMATS: dict[str, Callable[[loaders.Context], list[Record]]] = {
    "vqa-rad": loaders.load_vqa_rad,
    "mevf": loaders.load_mevf,
    "llava-med": loaders.load_llava_med,
    "parquet": parquet.load_parquet,
    "slake": loaders.load_slake,
    "pathvqa-pkl": loaders.load_pathvqa_pickle,
    "pathvqa-lxmert": loaders.load_pathvqa_lxmert,
    "jsonl": loaders.load_jsonl,
}


def _check_unique(items: list[Record], path: Path) -> None:
    seen: dict[str, str] = {}
    for it in items:
        if it["id"] in seen:
            raise InputError(f"{it.where}: duplicate id {it['id']!r} (first at {seen[it['id']]})")
        seen[it["id"]] = it.where


