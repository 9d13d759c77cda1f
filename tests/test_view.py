"""stmed view: the page made from real stage outputs, read back with html.parser (cards, counts,
marks, escaping, no absolute paths, curves) and, where Chromium is installed, opened headless."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from conftest import EXAMPLE_IMAGES, ROOT, run_stmed
from openai_server import serve

HOSTILE = '<script>document.body.setAttribute("data-pwned", "1")</script></script><!-- <img src=x onerror="document.title=1">'
TITLE = "</script><!--<script>document.title='pwned'</script>"
CT = Path(get_testdata_file("CT_small.dcm"))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.exists() else []


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_log(folder: Path, steps: int, scale: float) -> Path:
    """A log as stmed's trainer callback writes it (one row per log event, then the summary row)."""
    folder.mkdir(parents=True)
    rows = [{"step": s, "epoch": s / steps, "loss": 0.693 - scale * s, "rewards/chosen": scale * s,
             "rewards/rejected": -scale * s / 2, "rewards/margins": 1.5 * scale * s,
             "rewards/accuracies": min(1.0, s / steps + 0.25), "learning_rate": 5e-6} for s in range(1, steps + 1)]
    rows.append({"step": steps, "epoch": 1.0, "train_runtime": 1.0, "train_loss": 0.6})
    write_jsonl(folder / "train_log.jsonl", rows)
    (folder / "_meta.json").write_text(json.dumps({"stage": "dpo", "base_model": str(folder.parent / "model"),
                                                   "config": {"beta": 0.1, "loss": ["sigmoid"], "max_steps": steps}}))
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A self-training round through the real stages against a loopback OpenAI-compatible server
    (questions, answers, judge), a real eval of predictions, and two training logs."""
    d = tmp_path_factory.mktemp("viewrun")
    images = d / "images"
    images.mkdir()
    for p in sorted(EXAMPLE_IMAGES.glob("*.jpg"))[:3]:
        shutil.copy(p, images / p.name)
    shutil.copy(CT, images / "ct.dcm")
    (images / "broken.jpg").write_bytes((EXAMPLE_IMAGES / "synpic33378.jpg").read_bytes()[:300])
    remote = ("--engine", "openai", "-m", "policy", "--concurrency", "4")
    with serve() as server:
        proc = run_stmed("gen-questions", images, *remote, "--base-url", server.base_url, "--strategy", "instruct",
                         "-n", "2", "-o", d / "questions.jsonl")
        assert proc.returncode == 1, proc.stderr  # the broken image goes to questions.errors.jsonl
        proc = run_stmed("answer", d / "questions.jsonl", *remote, "--base-url", server.base_url, "-n", "2",
                         "-o", d / "answers.jsonl")
        assert proc.returncode == 0, proc.stderr
        # The loopback judge scores an answer by its word count: set the answers so that the
        # round holds every outcome (a pair, a tie, identical answers, a failure, hostile text).
        rows = jsonl(d / "answers.jsonl")
        assert len(rows) == 8, rows
        rows[0]["answers"] = [{"text": "a short answer", "seed": 40}, {"text": "a longer answer with more detail", "seed": 42}]
        rows[1]["answers"] = [{"text": "no", "seed": 40}, {"text": HOSTILE + " long enough to win", "seed": 42}]
        rows[2]["answers"] = [{"text": "same", "seed": 40}, {"text": "same", "seed": 42}]
        rows[3]["answers"] = [{"text": "one two", "seed": 40}, {"text": "three four", "seed": 42}]
        rows[4]["image"] = str(images / "gone.jpg")
        write_jsonl(d / "answers.jsonl", rows)
        proc = run_stmed("judge", d / "answers.jsonl", "--base-url", server.base_url, "--no-cache",
                         "-o", d / "pairs.jsonl", env={"OPENAI_API_KEY": "sk-test"})
        assert proc.returncode == 1, proc.stderr  # the record whose image is gone
    items = [{"id": i, "image": image, "question": q, "answer": a, "answer_type": t} for i, image, q, a, t in [
        ("c1", "synpic33378.jpg", "Is this a chest x-ray?", "yes", "CLOSED"),
        ("c2", "synpic33378.jpg", "Is there a fracture?", "no", "CLOSED"),
        ("o1", "synpic45544.jpg", "Which lobe?", "right upper lobe", "OPEN"),
        ("o2", "synpic45544.jpg", "What organ?", "brain", "OPEN")]]
    preds = [{"id": "c1", "prediction": "Yes, it is."}, {"id": "c2", "prediction": "Yes."},
             {"id": "o1", "prediction": "The right lobe."}, {"id": "o2", "prediction": HOSTILE}]
    shutil.copy(EXAMPLE_IMAGES / "synpic33378.jpg", d / "synpic33378.jpg")
    shutil.copy(EXAMPLE_IMAGES / "synpic45544.jpg", d / "synpic45544.jpg")
    write_jsonl(d / "items.jsonl", items)
    write_jsonl(d / "preds.jsonl", preds)
    proc = run_stmed("eval", "--bench", "jsonl", "--data", d / "items.jsonl", "--predictions", d / "preds.jsonl",
                     "-o", d / "eval.jsonl")
    assert proc.returncode == 0, proc.stderr
    train_log(d / "round-1" / "dpo", 8, 0.01)
    train_log(d / "round-2" / "dpo", 12, 0.02)
    return d


def inputs(d: Path) -> list[Path]:
    return [d / "questions.jsonl", d / "questions.errors.jsonl", d / "answers.jsonl", d / "pairs.jsonl",
            d / "pairs.skipped.jsonl", d / "pairs.errors.jsonl", d / "eval.jsonl", d / "round-1" / "dpo",
            d / "round-2" / "dpo" / "train_log.jsonl"]


@pytest.fixture(scope="module")
def page(run) -> str:
    out = run / "view.html"
    proc = run_stmed("view", *inputs(run), "-o", out, "--title", TITLE)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "wrote" in proc.stderr
    return out.read_text(encoding="utf-8")


class Page(HTMLParser):
    """What the tests look at: elements by class, script blocks, visible text per unit."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.units: list[dict] = []  # data-o, data-t and the text inside each unit
        self._script: dict | None = None
        self._depth = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "script":
            self._script = a
            self.scripts.append((a, ""))
        if tag == "section" and "unit" in (a.get("class") or "").split():
            self.units.append({"o": a.get("data-o", "").split(), "t": a.get("data-t", ""), "text": "",
                               "hidden": "hidden" in a})
            self._depth = 1
        elif self._depth and tag not in ("img", "br", "input", "meta"):
            self._depth += 1

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None
        elif self._depth:
            self._depth -= 1

    def handle_data(self, data):
        if self._script is not None:
            a, text = self.scripts[-1]
            self.scripts[-1] = (a, text + data)
        elif self._depth:
            self.units[-1]["text"] += data

    def having(self, cls: str, tag: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if cls in (a.get("class") or "").split() and (tag is None or t == tag)]


def test_one_card_per_image_with_every_outcome(run, page):
    p = Page(page)
    questions, pairs = jsonl(run / "questions.jsonl"), jsonl(run / "pairs.jsonl")
    skipped = jsonl(run / "pairs.skipped.jsonl")
    judged_errors, question_errors = jsonl(run / "pairs.errors.jsonl"), jsonl(run / "questions.errors.jsonl")
    assert len(pairs) >= 2 and len(skipped) >= 2 and len(judged_errors) == 1 and len(question_errors) == 1
    images = {q["image_id"] for q in questions} | {"broken.jpg"}
    eval_images = {"synpic33378.jpg", "synpic45544.jpg"}  # eval items carry no image_id: their own cards
    assert len(p.having("card-t", "template")) == len(images) + len(eval_images)
    tags = [u["o"] for u in p.units]
    assert sum("chosen" in t for t in tags) == len(pairs)
    assert sum("skipped" in t for t in tags) == len(skipped)
    assert sum("error" in t for t in tags) == 2, "the judge's failure and the broken image"
    marks = sorted(m for t in tags for m in t if m in ("right", "partial", "wrong"))
    assert marks == ["partial", "right", "wrong", "wrong"], marks
    assert len(p.having("chosen", "li")) == len(p.having("rejected", "li")) == len(pairs)
    data = json.loads(next(text for a, text in p.scripts if a.get("type") == "application/json"))
    assert data["records"] == len(questions) + 1 + len(eval_images) * 2
    assert data["outcomes"]["chosen"] == len(pairs) and data["outcomes"]["error"] == 2


def test_cards_show_seeds_scores_in_both_orders_reasons_and_why(run, page):
    p = Page(page)
    pair = jsonl(run / "pairs.jsonl")[0]
    unit = next(u for u in p.units if pair["question"] in u["text"])
    assert "seed 40" in unit["text"] and "seed 42" in unit["text"]
    assert "answer 1, then answer 2" in unit["text"] and "answer 2, then answer 1" in unit["text"]
    assert "The higher-scored answer is more detailed." in unit["text"], "the judge's reasons are shown"
    reasons = {s["skip"] for s in jsonl(run / "pairs.skipped.jsonl")}
    assert "identical-answers" in reasons and "tie" in reasons
    for reason in reasons:
        assert any(f"skipped: {reason}" in u["text"] for u in p.units if "skipped" in u["o"])
    failed = [u["text"] for u in p.units if "error" in u["o"]]
    assert any("gone.jpg: image not found" in t for t in failed) and any("broken.jpg" in t for t in failed)
    closed = next(u for u in p.units if "Is there a fracture?" in u["text"])
    assert closed["t"] == "closed" and "wrong" in closed["o"] and "normalised" in closed["text"]
    assert "closed_hit 0" in closed["text"]
    opened = next(u for u in p.units if "Which lobe?" in u["text"])
    assert "partial" in opened["o"] and "recall 0.67" in opened["text"] and "right lobe" in opened["text"]


def test_model_text_is_escaped_and_json_cannot_break_out(page):
    p = Page(page)
    assert [a.get("type") for a, _ in p.scripts] == ["application/json", None], "only the page's own two scripts"
    assert page.count("<script") == 2 and "data-pwned" not in "".join(text for _, text in p.scripts)
    hostile = [u for u in p.units if HOSTILE in u["text"]]
    assert len(hostile) >= 2, "the hostile answer and prediction show as text"
    data_block = next(text for a, text in p.scripts if a.get("type") == "application/json")
    assert "</" not in data_block and "<!--" not in data_block and "<" not in data_block
    assert json.loads(data_block)["title"] == TITLE
    csp = next(a["content"] for t, a in p.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "unsafe-inline" not in csp


def test_no_absolute_paths_unless_asked(run, page):
    for path in (run, ROOT, Path.home(), CT.parent):
        assert str(path) not in page, f"{path} leaked into the page"
    for tag in ("CompressedSamples", "JFK IMAGING CENTER"):  # CT_small's PatientName and InstitutionName
        assert tag not in page, f"a DICOM tag ({tag}) reached the page"
    ct = next(a for a in Page(page).tags if a[0] == "img" and a[1].get("alt") == "ct.dcm")
    assert ct[1]["src"].startswith("data:image/jpeg;base64,")
    out = run / "paths.html"
    assert run_stmed("view", run / "pairs.jsonl", "-o", out, "--show-paths").returncode == 0
    assert str(run) in out.read_text(encoding="utf-8")


def test_training_curves_overlay_runs(page):
    p = Page(page)
    panels = [a for t, a in p.tags if t == "svg" and "curve" in (a.get("class") or "")]
    assert [a["data-metric"] for a in panels] == ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                                  "rewards/accuracies"]
    assert sum(t == "polyline" for t, _ in p.tags) == 2 * len(panels), "each run is a line on every panel"
    assert "round-1/dpo" in page and "round-2/dpo" in page and "beta 0.1" in page


def test_a_training_folder_alone(run):
    out = run / "curves.html"
    proc = run_stmed("view", run / "round-1" / "dpo", "-o", out)
    assert proc.returncode == 0, proc.stderr
    p = Page(out.read_text(encoding="utf-8"))
    assert len([a for t, a in p.tags if t == "svg" and "curve" in (a.get("class") or "")]) == 5
    assert not p.having("card-t") and all(a.get("type") == "application/json" for a, _ in p.scripts)


def bad_input(d: Path, case: str) -> Path:
    if case == "malformed":
        (d / "bad.jsonl").write_text('{"id": 1}\n{oops\n')
        return d / "bad.jsonl"
    if case == "folder":
        (d / "folder").mkdir()
        return d / "folder"
    if case == "empty":
        (d / "empty.jsonl").write_text("")
        return d / "empty.jsonl"
    return d / "nope.jsonl"


@pytest.mark.parametrize("case, message", [
    ("missing", "nope.jsonl: no such file"),
    ("malformed", "bad.jsonl:2: not valid JSON"),
    ("folder", "folder without train_log.jsonl"),
    ("empty", "empty.jsonl: no records"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, case, message):
    out = tmp_path / "v.html"
    proc = run_stmed("view", bad_input(tmp_path, case), "-o", out)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_the_view_path_never_imports_torch(run):
    code = ("import sys; from stmed.cli import app; sys.argv = ['stmed', 'view', %r, '-o', %r, '-q']\n"
            "try:\n    app()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code % (str(run / "pairs.jsonl"), str(run / "t.html"))],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium'}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (apt-get install chromium)")
def test_the_page_renders_in_chromium(run, page, tmp_path):
    url = (run / "view.html").as_uri()
    dom = chromium(tmp_path, url, "--dump-dom").stdout
    cards = dom.split('<div id="cards"', 1)[1].split('<nav class="pager"', 1)[0] if '<div id="cards"' in dom else ""
    n_cards = len(Page(page).having("card-t", "template"))
    assert cards.count('<article class="card"') == n_cards, "the script rendered every card of page 1"
    assert f"of {n_cards} shown" in dom and "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]
    assert "<title>pwned" not in dom and "&lt;script&gt;document.body" in dom, "hostile text stays text"
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars")
    assert shot.exists(), proc.stderr[-2000:]
    from PIL import Image, ImageStat

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 1600)
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 500, "a blank or flat screenshot"
    assert ImageStat.Stat(img.convert("L")).stddev[0] > 20, "the screenshot shows no contrast (nothing rendered?)"


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (apt-get install chromium)")
@pytest.mark.parametrize("state, cards, units", [("o=error", 2, 2), ("q=identical", 1, 1), ("t=open&o=wrong", 1, 1),
                                                 ("o=chosen", 1, 2)])
def test_filters_and_search_in_chromium(run, page, tmp_path, state, cards, units):
    """The filters, read from the link's #fragment: only matching cards, and in them only matching units."""
    dom = chromium(tmp_path, (run / "view.html").as_uri() + "#" + state, "--dump-dom").stdout
    live = dom.split('<div id="cards"', 1)[1].split('<nav class="pager"', 1)[0]
    p = Page(live)
    shown = [u for u in p.units if not u["hidden"]]
    assert live.count('<article class="card"') == cards and len(shown) == units, state
    assert f"{units} of {len(Page(page).units)} records match" in dom


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (apt-get install chromium)")
def test_ten_thousand_records_render_one_page(tmp_path):
    rows = [{"id": f"img{i // 5}:q{i % 5}", "image_id": f"img{i // 5}", "image": f"missing/{i // 5}.jpg",
             "question": f"question {i}?", "answers": [{"text": f"answer {i} a", "seed": 40},
                                                        {"text": f"answer {i} b", "seed": 42}]}
            for i in range(10_000)]
    out = tmp_path / "big.html"
    proc = run_stmed("view", write_jsonl(tmp_path / "a.jsonl", rows), "-o", out, "--per-page", "25")
    assert proc.returncode == 0, proc.stderr
    assert Page(out.read_text(encoding="utf-8")).having("card-t", "template").__len__() == 2000
    dom = chromium(tmp_path, out.as_uri(), "--dump-dom").stdout
    live = dom.split('<div id="cards"', 1)[1].split('<nav class="pager"', 1)[0]
    assert live.count('<article class="card"') == 25 and "page 1 of 80" in dom
    assert "10000 of 10000 records match" in dom


@pytest.mark.slow
def test_a_real_dpo_folder(run, tiny_model, tmp_path):
    """The curves of a folder `stmed dpo` wrote on the tiny model, from its own train_log.jsonl and _meta.json."""
    pairs = write_jsonl(tmp_path / "pairs.jsonl", jsonl(run / "pairs.jsonl") * 2)
    proc = run_stmed("dpo", pairs, "-m", tiny_model, "-o", tmp_path / "dpo", "--max-steps", "2", "--batch-size", "1",
                     "--grad-accum", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    proc = run_stmed("view", tmp_path / "dpo", "-o", tmp_path / "dpo.html")
    assert proc.returncode == 0, proc.stderr
    p = Page((tmp_path / "dpo.html").read_text(encoding="utf-8"))
    panels = [a["data-metric"] for t, a in p.tags if t == "svg" and "curve" in (a.get("class") or "")]
    assert panels == ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]
    assert sum(t == "circle" for t, _ in p.tags) == 2 * len(panels), "one dot per logged step on every panel"
