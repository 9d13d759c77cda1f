"""One function per benchmark file format; each returns items as Records (see benchmarks.py).

Rows are named ``file: item N`` in errors (JSON arrays have no useful line numbers).
Anything malformed stops the load with one InputError before any output is written.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

from stmed.errors import InputError
from stmed.records import Record, read_records

YES_NO = ("yes", "no")


@dataclass
class Context:
    path: Path
    split: str = "test"
    lang: str = "en"
    image_root: Path | None = None
    notes: list[str] = field(default_factory=list)
    lazy_images: dict = field(default_factory=dict)  # item id -> (parquet file, row, cache folder)


def read_json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of questions, got {type(data).__name__}")
    return data


def answer_type_of(value, where: str) -> str:
    """CLOSED or OPEN from the data's own label ("CLOSED ", "yes/no", "other", ...)."""
    t = str(value).strip().upper()
    if t in ("CLOSED", "YES/NO", "CLOSE", "CLOSE-ENDED"):
        return "CLOSED"
    if t in ("OPEN", "OTHER", "NUMBER", "OPEN-ENDED"):
        return "OPEN"
    raise InputError(f"{where}: answer_type {value!r} is neither OPEN nor CLOSED")


def derived_type(answer: str) -> str:
    return "CLOSED" if answer.strip().lower() in YES_NO else "OPEN"


def make_item(where: str, base: Path, *, id, image, question, answer, answer_type=None, **extra) -> Record:
    """One item; a missing answer_type is derived from a yes/no answer and flagged."""
    for name, value in (("question", question), ("answer", answer)):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"{where}: missing {name!r}")
    if not isinstance(question, str):
        raise InputError(f"{where}: 'question' must be a string, got {type(question).__name__}")
    answer = str(answer).strip()
    item = {"id": str(id), "image": str(image), "question": str(question).strip(), "answer": answer}
    if answer_type is None or str(answer_type).strip() == "":
        item["answer_type"], item["answer_type_derived"] = derived_type(answer), True
    else:
        item["answer_type"] = answer_type_of(answer_type, where)
    item.update({k: v for k, v in extra.items() if v not in (None, "")})
    return Record.at(item, where, base)


class ImageFinder:
    """Finds ``name`` in the first folder that holds it; remembers the folder that worked."""

    def __init__(self, folders: list[Path], suffixes: tuple[str, ...] = ("",)):
        self.folders = [f for f in dict.fromkeys(folders) if f is not None]
        self.suffixes = suffixes

    def __call__(self, name: str) -> str:
        if os.path.isabs(name):
            return name
        if name.startswith("~"):
            return os.path.expanduser(name)
        for folder in self.folders:
            for suffix in self.suffixes:
                cand = folder / (name + suffix)
                if os.path.isfile(cand):  # False, not OSError, for a name too long or holding NUL
                    if folder is not self.folders[0]:
                        self.folders.remove(folder)
                        self.folders.insert(0, folder)  # the next image is almost surely here too
                    return str(cand)
        return str(self.folders[0] / (name + self.suffixes[0]))  # missing: the error names this path


def _folders(ctx: Context, *subdirs: str) -> list[Path]:
    base = ctx.path.resolve().parent
    roots = [ctx.image_root] if ctx.image_root else []
    return roots + [base / s for s in subdirs] + [base]


def _rows(ctx: Context) -> list[tuple[str, dict]]:
    rows = read_json_list(ctx.path)
    out = []
    for i, row in enumerate(rows):
        where = f"{ctx.path}: item {i}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        out.append((where, row))
    return out


def _field(row: dict, key: str, where: str):
    if key not in row:
        raise InputError(f"{where}: missing field {key!r}")
    return row[key]


def question_kind(value) -> str | None:
    """A question-type field as the data writes it, stripped and upper-cased; None where it is empty."""
    return None if value in (None, "", "NULL") else str(value).strip().upper()


def _rad_items(ctx: Context, rows) -> list[Record]:
    find = ImageFinder(_folders(ctx, "images", "VQA_RAD Image Folder"))
    base = ctx.path.resolve().parent
    return [
        make_item(where, base, id=_field(r, "qid", where), image=find(str(_field(r, "image_name", where))),
                  question=r.get("question"), answer=r.get("answer"), answer_type=_field(r, "answer_type", where),
                  question_type=question_kind(r.get("question_type")), organ=r.get("image_organ"),
                  phrase_type=r.get("phrase_type"))
        for where, r in rows
    ]


def load_vqa_rad(ctx: Context) -> list[Record]:
    """The original release: train and test together; test is phrase_type test_freeform/test_para."""
    rows = _rows(ctx)
    if ctx.split == "test":
        rows = [(w, r) for w, r in rows if str(r.get("phrase_type", "")).startswith("test_")]
    elif ctx.split == "train":
        rows = [(w, r) for w, r in rows if not str(r.get("phrase_type", "")).startswith("test_")]
    elif ctx.split != "all":
        raise InputError(f"--split {ctx.split!r}: the VQA-RAD release has test, train (or all)")
    return _rad_items(ctx, rows)


def load_mevf(ctx: Context) -> list[Record]:
    """MEVF-style split files (testset.json): the file is the split, images in ./images."""
    return _rad_items(ctx, _rows(ctx))


def load_slake(ctx: Context) -> list[Record]:
    find = ImageFinder(_folders(ctx, "imgs"))
    base = ctx.path.resolve().parent
    items = []
    for where, r in _rows(ctx):
        if ctx.lang != "all" and r.get("q_lang") != ctx.lang:
            continue
        items.append(make_item(
            where, base, id=_field(r, "qid", where), image=find(str(_field(r, "img_name", where))),
            question=r.get("question"), answer=r.get("answer"), answer_type=_field(r, "answer_type", where),
            question_type=question_kind(r.get("content_type")), lang=r.get("q_lang"),
            modality=r.get("modality"), location=r.get("location")))
    return items


_IMAGE_TAG = re.compile(r"^\s*<image>\s*|\s*<image>\s*$")


def load_llava_med(ctx: Context) -> list[Record]:
    """LLaVA-Med test.json: the question is the first human turn, the answer the first gpt turn."""
    find = ImageFinder(_folders(ctx, "images"))
    base = ctx.path.resolve().parent
    items = []
    for where, r in _rows(ctx):
        turns = r.get("conversations") or r.get("conversatons")  # the second spelling ships in some files
        if not isinstance(turns, list) or len(turns) < 2:
            raise InputError(f"{where}: 'conversations' must hold a question turn and an answer turn")
        question = _IMAGE_TAG.sub("", str(turns[0].get("value", "")))
        items.append(make_item(where, base, id=_field(r, "id", where), image=find(str(_field(r, "image", where))),
                               question=question, answer=turns[1].get("value"), answer_type=r.get("answer_type"),
                               question_type=question_kind(r.get("question_type"))))
    return items


def load_jsonl(ctx: Context) -> list[Record]:
    """Plain stmed items (JSONL, or a JSON array of the same objects)."""
    if ctx.path.suffix.lower() == ".json" and ctx.path.read_bytes().lstrip().startswith(b"["):
        rows = _rows(ctx)
    else:
        rows = [(r.where, r) for r in read_records(ctx.path)]
    find = ImageFinder(_folders(ctx))
    base = ctx.path.resolve().parent
    items = []
    for i, (where, r) in enumerate(rows):
        extra = {k: v for k, v in r.items() if k not in ("id", "image", "question", "answer", "answer_type")}
        if "question_type" in extra:
            extra["question_type"] = question_kind(extra["question_type"])
        items.append(make_item(where, base, id=r.get("id", f"{r.get('image')}:{i + 1}"),
                               image=find(str(_field(r, "image", where))), question=r.get("question"),
                               answer=r.get("answer"), answer_type=r.get("answer_type"), **extra))
    return items


# ---------------------------------------------------------------- PathVQA


class _PlainUnpickler(pickle.Unpickler):
    """Pickles can run code; benchmark files only need lists, dicts, strings and numbers."""

    def find_class(self, module, name):
        raise InputError(f"refusing to load {module}.{name} from a pickle: only plain lists and dicts are allowed")


def read_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(f).load()
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise InputError(f"{path}: not a readable pickle ({e})") from None


def _split_of(ctx: Context, image_id: str) -> str:
    m = re.match(r"(train|val|test)_", image_id)
    return m.group(1) if m else ctx.split


def _pathvqa_finder(ctx: Context, split: str) -> ImageFinder:
    base = ctx.path.resolve().parent
    folders = [ctx.image_root] if ctx.image_root else []
    for up in (base, base.parent, base.parent.parent, base.parent.parent.parent):
        folders += [up / "images" / split, up / "images", up]
    return ImageFinder(folders, suffixes=(".jpg", ".png", ""))


def _label_answer(label, where: str) -> str:
    """The top-scored answer of an LXMERT label dict {answer: score}."""
    if isinstance(label, dict) and label:
        return str(max(label.items(), key=lambda kv: kv[1])[0])
    if isinstance(label, str):
        return label
    raise InputError(f"{where}: label has no answer")


def load_pathvqa_pickle(ctx: Context) -> list[Record]:
    """Official qas pickles ({image, question, answer}) or LXMERT task pickles ({img_id, sent, label})."""
    rows = read_pickle(ctx.path)
    if not isinstance(rows, list):
        raise InputError(f"{ctx.path}: expected a pickled list of questions, got {type(rows).__name__}")
    return _pathvqa_rows(ctx, rows)


def load_pathvqa_lxmert(ctx: Context) -> list[Record]:
    """LXMERT json: per-question rows {img_id, sent, label} or per-image rows {img_id, sentf, labelf}."""
    rows = []
    for where, r in _rows(ctx):
        if "sentf" not in r:
            rows.append(r)
            continue
        labels = r.get("labelf") or {}
        for source, sents in r["sentf"].items():
            for k, sent in enumerate(sents):
                label = labels.get(source, [None] * len(sents))[k] if source in labels else None
                rows.append({"img_id": r["img_id"], "sent": sent, "label": label,
                             "question_id": f"{r['img_id']}:{source}:{k}"})
    return _pathvqa_rows(ctx, rows)


def _pathvqa_rows(ctx: Context, rows: list) -> list[Record]:
    base = ctx.path.resolve().parent
    finders: dict[str, ImageFinder] = {}
    items = []
    for i, r in enumerate(rows):
        where = f"{ctx.path}: item {i}"
        if not isinstance(r, dict):
            raise InputError(f"{where}: expected a dict, got {type(r).__name__}")
        image_id = str(r.get("image", r.get("img_id", "")))
        if not image_id:
            raise InputError(f"{where}: missing field 'image'")
        split = _split_of(ctx, image_id)
        find = finders.setdefault(split, _pathvqa_finder(ctx, split))
        answer = r["answer"] if "answer" in r else _label_answer(r.get("label"), where)
        items.append(make_item(
            where, base, id=r.get("question_id", r.get("qid", f"{image_id}:{i}")), image=find(image_id),
            question=r.get("question", r.get("sent")), answer=answer, answer_type=r.get("answer_type"),
            question_type=question_kind(r.get("question_type"))))
    return items
