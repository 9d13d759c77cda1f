"""Loaders on the real VQA-RAD and SLAKE files carried in examples/data, and on fixtures in other
formats written from them."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from conftest import BENCH_DATA
from stmed.errors import InputError
from stmed.evaluation.benchmarks import detect_format, get_benchmark, load_benchmark

RAD = BENCH_DATA / "vqa_rad" / "VQA_RAD Dataset Public.json"
SLAKE = BENCH_DATA / "slake" / "test.json"


def missing_images(items) -> list:
    """The items whose image file does not exist."""
    return [it for it in items if not os.path.isfile(it["image"])]


def _core(items):
    """What two formats of the same questions must agree on (ids, text, answers, image bytes)."""
    return [(it["id"], it["question"], it["answer"], Path(it["image"]).read_bytes()) for it in items]


@pytest.fixture(scope="module")
def rad_test():
    return load_benchmark("vqa-rad", RAD)


@pytest.fixture(scope="module")
def rad_rows():
    rows = json.loads(RAD.read_text())
    return [r for r in rows if r["phrase_type"] in ("test_freeform", "test_para")]


def test_vqa_rad_test_split_counts_and_images(rad_test):
    assert rad_test.format == "vqa-rad"
    assert rad_test.counts() == {"total": 451, "closed": 272, "open": 179}
    assert len({it["image"] for it in rad_test.items}) == 203
    assert missing_images(rad_test.items) == [], "every test image must resolve"
    assert rad_test.notes == [], "the standard split raises no count warning"
    assert rad_test.standard == "official"
    first = rad_test.items[0]
    assert first.keys() >= {"id", "image", "question", "answer", "answer_type", "question_type"}


def test_vqa_rad_folder_train_and_all(rad_test):
    assert _core(load_benchmark("vqa-rad", RAD.parent).items[:5]) == _core(rad_test.items[:5])
    train = load_benchmark("vqa-rad", RAD, split="train")
    every = load_benchmark("vqa-rad", RAD, split="all")
    assert len(train.items) == 2248 - 451 and len(every.items) == 2248
    assert {it["answer_type"] for it in every.items} == {"OPEN", "CLOSED"}, "'CLOSED ' is stripped"
    assert all(it["question_type"] == it["question_type"].strip().upper() for it in every.items if "question_type" in it)
    assert train.notes == [], "no standard counts are claimed for train"
    with pytest.raises(InputError, match="--split 'val'"):
        load_benchmark("vqa-rad", RAD, split="val")


def test_slake_english_and_other_languages(tmp_path):
    en = load_benchmark("slake", SLAKE)
    assert en.counts() == {"total": 1061, "closed": 416, "open": 645} and en.standard == "official"
    assert len({it["image"] for it in en.items}) == 96
    assert missing_images(en.items) == []
    assert {it["lang"] for it in en.items} == {"en"}
    with pytest.raises(InputError, match="no test items"):
        load_benchmark("slake", SLAKE, lang="zh")  # the carried copy is the English rows only
    # a release with both languages: rows the same as the English ones but for q_lang and qid
    rows = json.loads(SLAKE.read_text())
    both = rows + [{**r, "q_lang": "zh", "qid": r["qid"] + 100000} for r in rows[:30]]
    (tmp_path / "test.json").write_text(json.dumps(both, ensure_ascii=False))
    os.symlink(SLAKE.parent / "imgs", tmp_path / "imgs")
    zh = load_benchmark("slake", tmp_path, lang="zh")
    assert len(zh.items) == 30 and zh.notes == [], "no standard counts are claimed for Chinese"
    every = load_benchmark("slake", tmp_path / "test.json", lang="all")
    assert len(every.items) == 1091 and missing_images(every.items) == []
    with pytest.raises(InputError, match="--lang"):
        load_benchmark("slake", SLAKE, lang="fr")


def test_benchmarks_by_name_use_the_carried_copies():
    rad, slake = load_benchmark("vqa-rad"), load_benchmark("slake")
    assert rad.source == {"kind": "bundled", "path": "examples/data/vqa_rad/VQA_RAD Dataset Public.json"}
    assert rad.counts() == {"total": 451, "closed": 272, "open": 179} and rad.standard == "official"
    assert slake.source["kind"] == "bundled" and slake.counts()["total"] == 1061
    assert rad.describe()["expected"] == {"total": 451, "closed": 272, "open": 179}
    assert missing_images(rad.items) == [] and missing_images(slake.items) == []
    with pytest.raises(InputError, match="bundled copy holds only en"):
        load_benchmark("slake", lang="zh")
    with pytest.raises(InputError, match="needs --data"):
        load_benchmark("jsonl")


def _link_images(rad_rows, folder: Path, suffix: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in {r["image_name"] for r in rad_rows}:
        target = folder / (Path(name).stem + suffix)
        if not target.exists():
            os.symlink(RAD.parent / "images" / name, target)


def test_mevf_testset(tmp_path, rad_rows, rad_test):
    keep = ("qid", "image_name", "image_organ", "answer", "answer_type", "question_type", "question", "phrase_type")
    (tmp_path / "testset.json").write_text(json.dumps([{k: r[k] for k in keep} for r in rad_rows]))
    _link_images(rad_rows, tmp_path / "images")
    got = load_benchmark("vqa-rad", tmp_path)
    assert got.format == "mevf"
    assert _core(got.items) == _core(rad_test.items)
    assert [it["answer_type"] for it in got.items] == [it["answer_type"] for it in rad_test.items]


def test_llava_med_test_json(tmp_path, rad_rows, rad_test):
    rows = [{"id": r["qid"], "image": r["image_name"], "answer_type": r["answer_type"],
             "conversations": [{"from": "human", "value": "<image>\n" + r["question"]},
                               {"from": "gpt", "value": str(r["answer"])}]} for r in rad_rows]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    got = load_benchmark("vqa-rad", tmp_path / "test.json", image_root=RAD.parent / "images")
    assert got.format == "llava-med"
    assert _core(got.items) == _core(rad_test.items)
    assert [it["answer_type"] for it in got.items] == [it["answer_type"] for it in rad_test.items]


def _write_parquet(path: Path, rad_rows, with_type: bool) -> None:
    import pyarrow as pa  # a dependency of stmed: no skip
    import pyarrow.parquet as pq

    columns = {
        "image": [{"bytes": (RAD.parent / "images" / r["image_name"]).read_bytes(), "path": r["image_name"]} for r in rad_rows],
        "question": [r["question"] for r in rad_rows],
        "answer": [str(r["answer"]) for r in rad_rows],
        "qid": [str(r["qid"]) for r in rad_rows],
    }
    if with_type:
        columns["answer_type"] = [r["answer_type"] for r in rad_rows]
    pq.write_table(pa.table(columns), path, row_group_size=50)  # Hub exports hold many row groups


def test_parquet_export_with_image_bytes(tmp_path, monkeypatch, rad_rows, rad_test):
    monkeypatch.setenv("STMED_CACHE_DIR", str(tmp_path / "cache"))
    _write_parquet(tmp_path / "test-00000-of-00001.parquet", rad_rows, with_type=False)
    got = load_benchmark("vqa-rad", tmp_path)  # a folder holding a Hugging Face split file
    assert got.format == "parquet"
    assert not (tmp_path / "cache").exists(), "loading reads the text columns only: no image is written yet"
    assert got.materialize(got.items[60:63]) == 3, "a run writes the images of its own items only"
    assert len(list((tmp_path / "cache" / "parquet-images").iterdir())) <= 3
    got.materialize(got.items)
    assert _core(got.items) == _core(rad_test.items), "same questions, answers and image bytes as the JSON"
    # the file has no answer_type: VQA-RAD's are recovered from the release by question and answer text
    assert [it["answer_type"] for it in got.items] == [it["answer_type"] for it in rad_test.items]
    assert not any(it.get("answer_type_derived") for it in got.items)
    assert any("recovered from the official release" in n and "451 of 451" in n for n in got.notes), got.notes
    assert got.standard == "official"
    assert len({it["image"] for it in got.items}) == 203, "images are stored once per content"
    assert all(str(tmp_path / "cache") in it["image"] for it in got.items)

    # a benchmark with no release here to join to: a yes/no answer is CLOSED, and the notes say so
    other = load_benchmark("slake", tmp_path / "test-00000-of-00001.parquet")
    assert all(it["answer_type_derived"] for it in other.items)
    for mine, ref in zip(other.items, rad_test.items):
        if ref["answer"].lower() in ("yes", "no"):
            assert mine["answer_type"] == "CLOSED" == ref["answer_type"], "a yes/no answer is closed in both"
    assert any("derived for 451 items" in n for n in other.notes) and other.standard is None

    _write_parquet(tmp_path / "typed.parquet", rad_rows, with_type=True)
    typed = load_benchmark("vqa-rad", tmp_path / "typed.parquet")
    assert [it["answer_type"] for it in typed.items] == [it["answer_type"] for it in rad_test.items]
    assert not any(it.get("answer_type_derived") for it in typed.items)


def test_pathvqa_official_pickle(tmp_path, rad_rows, rad_test):
    # The official layout: pvqa/qas/test/test_qa.pkl with images in pvqa/images/test/<image>.jpg
    root = tmp_path / "pvqa"
    _link_images(rad_rows, root / "images" / "test")
    (root / "qas" / "test").mkdir(parents=True)
    rows = [{"image": Path(r["image_name"]).stem, "question": r["question"], "answer": str(r["answer"])} for r in rad_rows]
    with open(root / "qas" / "test" / "test_qa.pkl", "wb") as f:
        pickle.dump(rows, f)
    got = load_benchmark("pathvqa", root)
    assert got.format == "pathvqa-pkl"
    assert missing_images(got.items) == []
    assert [c[1:] for c in _core(got.items)] == [c[1:] for c in _core(rad_test.items)]
    assert any("expected 6761" in n for n in got.notes), "a non-standard PathVQA split is flagged"


def test_pathvqa_lxmert_json(tmp_path, rad_rows, rad_test):
    _link_images(rad_rows, tmp_path / "images" / "test")
    per_image: dict[str, dict] = {}
    for r in rad_rows:
        entry = per_image.setdefault(r["image_name"], {"img_id": Path(r["image_name"]).stem, "sentf": {"pvqa": []},
                                                       "labelf": {"pvqa": []}})
        entry["sentf"]["pvqa"].append(r["question"])
        entry["labelf"]["pvqa"].append({str(r["answer"]): 1.0})
    (tmp_path / "test.json").write_text(json.dumps(list(per_image.values())))
    got = load_benchmark("pathvqa", tmp_path / "test.json")
    assert got.format == "pathvqa-lxmert"
    want = sorted((c[1], c[2], c[3]) for c in _core(rad_test.items))
    assert sorted((c[1], c[2], c[3]) for c in _core(got.items)) == want


def test_pickle_with_code_is_refused(tmp_path):
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump([{"image": "x", "question": "q", "answer": Path("a")}], f)
    with pytest.raises(InputError, match="refusing to load"):
        load_benchmark("pathvqa", tmp_path / "evil.pkl")


def test_stmed_jsonl_and_errors(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(b"not really")
    lines = [{"id": "q1", "image": "a.jpg", "question": "Is it?", "answer": "Yes"},
             {"id": "q2", "image": "a.jpg", "question": "Where?", "answer": "left lung", "answer_type": "open"}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    got = load_benchmark("jsonl", tmp_path / "items.jsonl")
    assert [it["answer_type"] for it in got.items] == ["CLOSED", "OPEN"]
    assert got.items[0]["image"] == str(img) and got.items[0]["answer_type_derived"] is True
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "q1", "image": "a.jpg", "answer": "x"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: missing 'question'"):
        load_benchmark("jsonl", tmp_path / "bad.jsonl")
    (tmp_path / "odd.json").write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(InputError, match="--format"):
        detect_format(tmp_path / "odd.json")
    with pytest.raises(InputError, match="did you mean 'vqa-rad'"):
        get_benchmark("vqarad")
    with pytest.raises(InputError, match="no such file"):
        load_benchmark("slake", tmp_path / "nope.json")


def test_pathvqa_hub_mirror_counts_are_named(tmp_path):
    """6,719 rows is the Hub mirror's test split, not the official 6,761: said, not flagged as wrong."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 6719
    answers = ["yes" if i % 2 else "fibrosis" for i in range(n)]
    pq.write_table(pa.table({"image": [{"bytes": b"\xff\xd8not-decoded", "path": None}] * n,
                             "question": [f"question {i}?" for i in range(n)], "answer": answers}),
                   tmp_path / "test-00000-of-00001.parquet", row_group_size=100)
    got = load_benchmark("pathvqa", tmp_path)
    assert got.counts() == {"total": 6719, "closed": 3359, "open": 3360}
    assert got.standard == "hub-mirror" and got.describe()["expected"]["total"] == 6761
    assert any("6,719 rows (the official test has 6,761)" in note for note in got.notes), got.notes
    assert not any("expected 6761" in note for note in got.notes)
