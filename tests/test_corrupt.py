"""Hard negatives from corrupted images: `stmed answer --corrupt`, `stmed judge --hard-negative
corrupt` (with and without the judge), `stmed dpo` on those pairs, and `stmed view`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from conftest import EXAMPLE_IMAGES, run_stmed
from judge_data import answer, read_jsonl
from openai_server import serve
from stmed.corrupt import Corruption
from stmed.images import encode_for_api, load_image
from stmed.records import read_records
from stmed.images import record_image
from stmed.stages.common import seed_for
from stmed.stages.judge import JudgeConfig, judge as judge_records
from stmed.stages.runner import Files

TINY = ("--device", "cpu", "--max-new-tokens", "6")
CT = get_testdata_file("CT_small.dcm", download=False)


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    """Three questions with relative image paths: two JPEGs and a real CT DICOM."""
    d = tmp_path_factory.mktemp("corrupt")
    (d / "imgs").mkdir()
    jpgs = sorted(EXAMPLE_IMAGES.glob("*.jpg"))[:2]
    for p in jpgs:
        shutil.copy(p, d / "imgs" / p.name)
    shutil.copy(CT, d / "imgs" / "ct.dcm")
    rows = [{"id": f"{name}:q0", "image": f"imgs/{name}", "question": f"What does scan {k} show?", "source": "test"}
            for k, name in enumerate([p.name for p in jpgs] + ["ct.dcm"])]
    path = d / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def answered(questions, tiny_model) -> tuple[Path, Path]:
    """The questions answered without and with --corrupt (the latter at batch size 1, then 8)."""
    plain, bad, again = (questions.parent / f"{n}.jsonl" for n in ("plain", "corrupt", "corrupt-b1"))
    for out, extra in ((plain, ()), (bad, ("--corrupt", "mask:0.3", "--corrupt-seed", "5", "--batch-size", "8")),
                       (again, ("--corrupt", "mask:0.3", "--corrupt-seed", "5", "--batch-size", "1"))):
        proc = run_stmed("answer", questions, "-m", tiny_model, *TINY, *extra, "-o", out)
        assert proc.returncode == 0, proc.stderr
    assert read_jsonl(bad) == read_jsonl(again), "corruptions and their answers must not depend on the batch size"
    return plain, bad


def test_answer_corrupt_records_a_seeded_corruption_that_rebuilds_the_image(answered, questions):
    plain, bad = answered
    for p, r in zip(read_jsonl(plain), read_jsonl(bad)):
        assert "corrupt" not in p and "corrupt_answers" not in p, "without --corrupt a record must not change"
        assert r["answers"] == p["answers"], "answers on the real image must not change with --corrupt"
        assert r["corrupt"] == {"kind": "mask", "strength": 0.3, "seed": seed_for(5, r["id"], 0)}
        [a] = r["corrupt_answers"]
        assert a["seed"] == r["answers"][0]["seed"] == 40 and isinstance(a["text"], str) and a["ids"], a
    rec = read_records(bad)[0]  # the recorded parameters rebuild the pixels the model saw
    c = Corruption.from_record(rec["corrupt"], rec.where)
    img, _ = load_image(questions.parent / rec["image"])
    rebuilt = np.asarray(c.apply(img))
    assert np.array_equal(rebuilt, np.asarray(record_image(rec, corrupt=c))), "stmed answer corrupts the decoded image"
    assert np.array_equal(rebuilt, np.asarray(c.apply(img))), "the same seed must give the same pixels"
    assert not np.array_equal(rebuilt, np.asarray(img)), "a mask must change the image"
    assert not np.array_equal(rebuilt, np.asarray(c.with_seed(c.seed + 1).apply(img))), "another seed, another mask"


def test_a_dicom_is_decoded_then_corrupted(answered):
    rec = [r for r in read_records(answered[1]) if r["image"].endswith(".dcm")][0]
    c = Corruption.from_record(rec["corrupt"], rec.where)
    real, info = load_image(CT)
    assert info.format == "DICOM" and real.mode == "RGB", info
    seen = np.asarray(record_image(rec, corrupt=c))
    assert np.array_equal(seen, np.asarray(c.apply(real))), "a DICOM goes through the same rendering before corruption"
    assert rec["corrupt_answers"][0]["text"] is not None


def test_unjudged_hard_negatives_pair_the_corrupt_answer_and_train_in_dpo(answered, tiny_model, tmp_path):
    rows = read_jsonl(answered[1])
    inp = answered[1].parent / "hard.jsonl"  # beside the images its relative paths name
    torn = {**rows[0], "id": "torn", "corrupt": {"kind": "smudge"}}
    missing = {k: v for k, v in rows[1].items() if k not in ("corrupt", "corrupt_answers")} | {"id": "missing"}
    inp.write_text("".join(json.dumps(r) + "\n" for r in [*rows, torn, missing]))
    out = inp.with_name("hard-pairs.jsonl")
    proc = run_stmed("judge", inp, "--hard-negative", "corrupt", "--no-confirm", "-o", out, "-q",
                     env={"OPENAI_API_KEY": ""})  # no judge is asked, so no key is needed
    assert proc.returncode == 1, proc.stderr
    pairs = read_jsonl(out)
    assert [p["id"] for p in pairs] == [r["id"] for r in rows]
    for p, r in zip(pairs, rows):
        assert p["chosen"] == r["answers"][0]["text"] and p["rejected"] == r["corrupt_answers"][0]["text"], p
        assert p["margin"] is None and p["judge"] is None and p["hard_negative"] == "corrupt"
        assert p["corrupt"] == r["corrupt"] and p["answer_prompt"] == r["answer_prompt"] and p["source"] == "test"
    errors = {e["id"]: e["error"] for e in read_jsonl(inp.with_name("hard-pairs.errors.jsonl"))}
    assert errors["torn"].startswith(f"{inp}:4: field 'corrupt' must be an object"), errors
    assert errors["missing"] == f"{inp}:5: --hard-negative corrupt needs field 'corrupt_answers' (written by stmed answer --corrupt)"
    proc = run_stmed("judge", inp, "--hard-negative", "corrupt", "--no-confirm", "-o", out, "-q")
    assert proc.returncode == 1 and read_jsonl(out) == pairs, "a rerun keeps what is written and redoes only the failures"
    proc = run_stmed("dpo", out, "-m", tiny_model, "--dry-run", "--json", "-o", tmp_path / "dpo")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.splitlines()[-1].removeprefix("stmed: ")) == {"pairs": 3, "rejected": 0}
    first = json.loads(proc.stdout)
    assert first["chosen_ids"][:-1] == rows[0]["answers"][0]["ids"], "dpo trains the ids the model emitted"
    assert first["rejected_ids"][:-1] == rows[0]["corrupt_answers"][0]["ids"], "the corrupted-image answer's too"


def test_the_judge_keeps_a_hard_negative_only_when_the_real_image_answer_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("STMED_HOME", str(tmp_path / "home"))
    image = str(sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0])
    spec = {"kind": "noise", "strength": 0.5, "seed": 7}
    lengths = {"real-wins": (8, 2), "corrupt-wins": (2, 8), "tie": (4, 4)}  # the loopback judge prefers more words
    rows = [{"id": k, "image": image, "question": "What is seen?", "corrupt": spec,
             "answers": [{"text": answer(a, "real"), "seed": 40}, {"text": answer(3, "other"), "seed": 42}],
             "corrupt_answers": [{"text": answer(b, "noisy"), "seed": 40}]} for k, (a, b) in lengths.items()]
    inp = tmp_path / "answers.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with serve() as srv:
        cfg = JudgeConfig(base_url=srv.base_url, hard_negative="corrupt", timeout=5)
        code = judge_records(cfg, read_records(inp), Files(str(tmp_path / "pairs.jsonl"), quiet=True))
        images = set(srv.stats.images)
    assert code == 0
    [pair] = read_jsonl(tmp_path / "pairs.jsonl")
    assert pair["id"] == "real-wins" and pair["hard_negative"] == "corrupt" and pair["margin"] >= 1
    assert (pair["chosen"], pair["rejected"]) == (answer(8, "real"), answer(2, "noisy"))
    assert pair["answers"] == rows[0]["answers"] and pair["judge"]["pair"] == [1, 3], pair["judge"]
    skipped = {s["id"]: s["skip"] for s in read_jsonl(tmp_path / "pairs.skipped.jsonl")}
    assert skipped == {"corrupt-wins": "corrupt-preferred", "tie": "tie"}
    real_url, _ = encode_for_api(load_image(image)[0], cfg.max_side)
    assert images == {real_url}, "the judge sees the real image: the question is about it"


def test_view_shows_the_corrupted_image_beside_the_real_one(answered, tmp_path):
    from stmed.view.page import ViewConfig, build_page
    from stmed.view.thumbs import Thumbnailer

    out = tmp_path / "pairs.jsonl"
    assert run_stmed("judge", answered[1], "--hard-negative", "corrupt", "--no-confirm", "-o", out, "-q").returncode == 0
    page, _ = build_page(ViewConfig([str(answered[1]), str(out)], quiet=True))
    rec = read_records(out)[0]
    corrupted = Thumbnailer().corrupted(answered[1].parent / rec["image"], Corruption.from_record(rec["corrupt"], "x"))
    assert corrupted.url in page and Thumbnailer()(answered[1].parent / rec["image"]).url in page
    assert page.count('class="beside"') == 3 and page.count("hard negative: corrupt") == 3
    assert page.count("\u2717 rejected</span><span class=\"aid\">answer 3 on the corrupted image</span>") == 3
    assert corrupted.url != Thumbnailer()(answered[1].parent / rec["image"]).url


@pytest.mark.parametrize("args, says", [
    (("answer", "--corrupt", "smudge"), "--corrupt 'smudge': the kind must be one of noise, blur, mask, crop"),
    (("answer", "--corrupt", "blur:2"), "the strength must be in (0, 1]"),
    (("answer", "--corrupt", "noise", "-n", "2", "--corrupt-n", "3"), "--corrupt-n 3: at most -n (2)"),
    (("judge", "--no-confirm"), "--no-confirm needs --hard-negative"),
    (("judge", "--hard-negative", "blur"), "--hard-negative 'blur': expected corrupt"),
])
def test_bad_corrupt_flags_exit_2_before_any_output(questions, tmp_path, args, says):
    out = tmp_path / "out.jsonl"
    proc = run_stmed(args[0], questions, "-m", "no-such-model", *args[1:], "-o", out) if args[0] == "answer" \
        else run_stmed(*args, str(questions), "-o", out)
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()
