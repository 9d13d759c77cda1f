"""stmed report's paired tests: McNemar exact and the paired bootstrap against hand computations,
and a report over real `stmed eval --predictions` summaries on the same items."""

from __future__ import annotations

import json

import pytest

from conftest import run_stmed


def test_mcnemar_exact_is_the_doubled_binomial_tail():
    from stmed.evaluation.significance import mcnemar_exact

    assert mcnemar_exact(0, 5) == pytest.approx(2 * 1 / 32)  # C(5,0) / 2^5, doubled
    assert mcnemar_exact(9, 1) == pytest.approx(2 * (1 + 10) / 1024)  # C(10,0) + C(10,1)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0, "no evidence either way: p = 1"


def test_paired_bootstrap_sees_a_consistent_gain_and_no_gain_in_identical_runs():
    from stmed.evaluation.significance import paired_bootstrap

    a = [0.0] * 50
    better = [1.0] * 20 + [0.0] * 30
    same = paired_bootstrap(a, a, resamples=500, seed=1)
    assert same["diff"] == 0 and same["p"] == 1.0, same
    gain = paired_bootstrap(a, better, resamples=500, seed=1)
    assert gain["diff"] == pytest.approx(0.4) and gain["p"] == pytest.approx(1 / 501), gain
    assert gain["ci95"][0] > 0.2 and gain["ci95"][1] < 0.6, gain
    assert paired_bootstrap(a, better, resamples=500, seed=1) == gain, "seeded: the same result twice"
    noisy = paired_bootstrap([0.0, 1.0] * 10, [1.0, 0.0] * 10, resamples=500, seed=1)
    assert noisy["diff"] == 0 and noisy["p"] > 0.5, noisy


def _bench_and_predictions(tmp_path, n_closed: int, n_open: int):
    """A jsonl benchmark and three answer files: the base, a run right on every closed item the
    base gets wrong (and on every open item), and a copy of the base on other ids."""
    items = [{"id": f"c{i}", "image": "x.jpg", "question": "Is it normal?", "answer": "yes", "answer_type": "CLOSED"}
             for i in range(n_closed)]
    items += [{"id": f"o{i}", "image": "x.jpg", "question": "Which organ?", "answer": "liver", "answer_type": "OPEN"}
              for i in range(n_open)]
    (tmp_path / "x.jpg").write_bytes(b"")
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(it) + "\n" for it in items))
    base = {it["id"]: ("no" if it["answer_type"] == "CLOSED" and i % 2 else
                       "yes" if it["answer_type"] == "CLOSED" else "the kidney") for i, it in enumerate(items)}
    better = {k: ("yes" if k.startswith("c") else "the liver") for k in base}
    files = {}
    for name, preds in (("base", base), ("better", better)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in preds.items()))
    return bench, files


def test_report_marks_a_significant_gain_over_the_first_run(tmp_path):
    bench, files = _bench_and_predictions(tmp_path, n_closed=20, n_open=12)
    summaries = []
    for name, preds in files.items():
        summaries.append(tmp_path / f"{name}.json")
        r = run_stmed("eval", "--bench", "jsonl", "--data", bench, "--predictions", preds, "--name", name,
                      "-o", tmp_path / f"{name}.out.jsonl", "--summary", summaries[-1], "--bootstrap", "100", "-q")
        assert r.returncode == 0, r.stderr[-2000:]
    per_item = json.loads(summaries[0].read_text())["per_item"]
    assert per_item["closed"]["ids"][:2] == ["c0", "c1"] and per_item["closed"]["closed_accuracy"][:2] == [1, 0]
    r = run_stmed("report", *summaries, "--json-out", "-", "--markdown", tmp_path / "r.md")
    assert r.returncode == 0, r.stderr
    old = run_stmed("report", *summaries, "--json", "-")  # the old spelling, for one release
    assert old.returncode == 0 and old.stdout == r.stdout, old.stderr
    assert "stmed: note: stmed report --json is now --json-out" in old.stderr, old.stderr
    tests = {t["metric"]: t for t in json.loads(r.stdout)["comparisons"]}
    closed = tests["closed_accuracy"]
    # the base misses the 10 odd closed items, the better run none: McNemar on b=0, c=10
    assert closed["discordant"] == {"only_baseline": 0, "only_run": 10}, closed
    assert closed["p"] == pytest.approx(2 / 1024) and closed["significant"] and closed["n"] == 20, closed
    assert tests["open_recall"]["diff"] == pytest.approx(100.0) and tests["open_recall"]["significant"], tests
    table = (tmp_path / "r.md").read_text()
    assert "| closed (accuracy) | 50.00" in table and "100.00" in table and " *" in table, table
    assert "differs from the first run on the same benchmark at p < 0.05" in table, table


def test_runs_with_no_per_item_scores_or_few_shared_items_say_so(tmp_path):
    from stmed.evaluation.significance import compare_all

    bench, files = _bench_and_predictions(tmp_path, n_closed=6, n_open=0)
    out = tmp_path / "s.json"
    assert run_stmed("eval", "--bench", "jsonl", "--data", bench, "--predictions", files["base"],
                     "-o", tmp_path / "o.jsonl", "--summary", out, "--bootstrap", "0", "-q").returncode == 0
    base = {**json.loads(out.read_text()), "name": "base"}
    old = {k: v for k, v in base.items() if k != "per_item"} | {"name": "old"}
    fewer = json.loads(json.dumps(base)) | {"name": "fewer"}
    fewer["per_item"]["closed"] = {k: v[:3] for k, v in fewer["per_item"]["closed"].items()}
    tests, notes = compare_all([base, old, fewer], resamples=100)
    assert "old vs base" in notes[0] and "no per-item scores" in notes[0], notes
    assert "3 items matched by id" in notes[1], notes
    assert {t["run"] for t in tests} == {"fewer"} and all(not t["significant"] for t in tests), tests
