"""The page's stylesheet and script, inline: the page must open with no network at all.

The script only clones the cards' ``<template>``s for the page on screen and hides what the
filters leave out; it never builds HTML from strings, so no record text is ever parsed as markup.
"""

CSS = """\
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --card: #fff;
  --green: #1a7f37; --green-bg: #dafbe1; --red: #cf222e; --red-bg: #ffebe9;
  --amber: #9a6700; --amber-bg: #fff8c5; --blue: #0969da; --blue-bg: #ddf4ff; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); }
header.top, #training, #records { max-width: 1200px; margin: 0 auto; padding: 12px 20px; }
h1 { font-size: 20px; margin: 8px 0 2px; }
h2 { font-size: 16px; margin: 0 0 4px; word-break: break-all; }
.inputs, .status, .file, .gen, .facts, .about, .src { color: var(--muted); font-size: 12.5px; }
.totals { margin-top: 6px; }
.tag, .badge, .atype, .uid, .mark, .seed, .score, .aid, .plabel, .pmodel, .pscores { display: inline-block;
  border-radius: 10px; padding: 0 7px; margin-right: 5px; font-size: 12px; background: var(--bg);
  border: 1px solid var(--line); }
.tag.chosen, .badge.pair, .mark.chosen, .mark.right { background: var(--green-bg); color: var(--green);
  border-color: #aceebb; }
.tag.rejected, .mark.rejected, .mark.wrong, .tag.wrong { background: var(--red-bg); color: var(--red);
  border-color: #ffcecb; }
.tag.skipped, .badge.skipped, .mark.partial, .tag.partial { background: var(--amber-bg); color: var(--amber);
  border-color: #f5e0a0; }
.tag.error, .badge.error { background: var(--red); color: #fff; border-color: var(--red); }
.tag.right { background: var(--green-bg); color: var(--green); }
.atype { background: var(--blue-bg); color: var(--blue); border-color: #b6e3ff; text-transform: uppercase; }
.uid { font-family: ui-monospace, monospace; }
.filters { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; position: sticky; top: 0; z-index: 2; }
.filters input[type=search] { flex: 1 1 260px; padding: 6px 9px; font: inherit; border: 1px solid var(--line);
  border-radius: 6px; }
.filters select, .pager button { font: inherit; padding: 4px 8px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--bg); }
.status { margin: 8px 2px; }
.card { display: grid; grid-template-columns: 256px 1fr; gap: 16px; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; padding: 14px; margin: 0 0 14px; }
.media img { width: 256px; max-height: 320px; object-fit: contain; background: #000; border-radius: 4px;
  display: block; }
.noimg { width: 256px; height: 160px; display: flex; align-items: center; justify-content: center; text-align: center;
  padding: 10px; background: var(--bg); color: var(--muted); border: 1px dashed var(--line); border-radius: 4px; }
.body { min-width: 0; }
.badge.hard { background: var(--red-bg); color: var(--red); border-color: #ffcecb; }
.beside { display: flex; gap: 8px; margin: 6px 0; }
.beside figure { margin: 0; }
.beside img, .beside .noimg { width: 128px; height: auto; max-height: 160px; object-fit: contain; background: #000;
  border-radius: 4px; display: block; }
.beside figcaption { color: var(--muted); font-size: 12px; }
.description { margin: 6px 0; }
.lbl { font-size: 11px; font-weight: 600; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
  margin-right: 4px; }
.unit { border-top: 1px solid var(--line); padding: 8px 0 4px; margin-top: 8px; }
.unit header { margin-bottom: 3px; }
.question { margin: 3px 0; font-weight: 600; white-space: pre-wrap; overflow-wrap: anywhere; }
.gold { margin: 3px 0; }
.answers { list-style: none; padding: 0; margin: 4px 0; }
.answer, .eval { border: 1px solid var(--line); border-left-width: 4px; border-radius: 6px; padding: 5px 9px;
  margin: 5px 0; }
.answer.chosen, .eval.right { border-left-color: var(--green); background: #f6fef8; }
.answer.rejected, .eval.wrong { border-left-color: var(--red); background: #fffafa; }
.eval.partial { border-left-color: var(--amber); background: #fffdf0; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin-top: 2px; }
.norm q { font-family: ui-monospace, monospace; font-size: 12.5px; background: var(--bg); padding: 0 3px; }
.judge { margin: 6px 0 2px; padding: 6px 9px; background: var(--bg); border-radius: 6px; }
.scores { border-collapse: collapse; margin: 5px 0; font-size: 12.5px; }
.scores th, .scores td { border: 1px solid var(--line); padding: 1px 8px; text-align: right; }
.scores th:first-child { text-align: left; font-weight: normal; color: var(--muted); }
.reason { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 13px; margin: 3px 0; }
.error { margin: 6px 0; padding: 6px 9px; border-radius: 6px; background: var(--red-bg); color: #82071e;
  overflow-wrap: anywhere; }
.error pre { white-space: pre-wrap; margin: 4px 0 0; }
#cards.only-chosen .answer:not(.chosen), #cards.only-rejected .answer:not(.rejected) { display: none; }
.pager { display: flex; gap: 10px; align-items: center; justify-content: center; margin: 6px 0 30px; }
#training .panels { display: flex; flex-wrap: wrap; gap: 10px; }
.curve { background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
.curve .grid { stroke: #eaeef2; } .curve .frame { fill: none; stroke: var(--line); }
.curve .tick { font-size: 10px; fill: var(--muted); } .curve .ptitle { font-size: 12px; font-weight: 600; }
.legend { list-style: none; padding: 0; margin: 4px 0 10px; }
.legend li { margin: 2px 0; }
@media (max-width: 700px) { .card { grid-template-columns: 1fr; } .media img, .noimg { width: 100%; } }
"""

JS = """\
"use strict";
(function () {
  var data = JSON.parse(document.getElementById("stmed-data").textContent);
  var tpls = Array.prototype.slice.call(document.querySelectorAll("template.card-t"));
  var box = document.getElementById("cards");
  var q = document.getElementById("q"), o = document.getElementById("o"), t = document.getElementById("t");
  var per = document.getElementById("per");
  var cards = tpls.map(function (tpl) {
    var units = Array.prototype.map.call(tpl.content.querySelectorAll(".unit"), function (u) {
      return { o: (u.getAttribute("data-o") || "").split(" "), t: u.getAttribute("data-t") || "", el: u, text: null };
    });
    return { tpl: tpl, units: units, head: null };
  });
  var shown = [], page = 0, matched = 0;

  function lower(node) { return node ? node.textContent.toLowerCase() : ""; }
  function headText(c) {
    if (c.head === null) {
      var f = c.tpl.content;
      c.head = [".body h2", ".file", ".description"].map(function (s) { return lower(f.querySelector(s)); }).join(" ");
    }
    return c.head;
  }
  function unitMatches(c, u, terms, out, type) {
    if (out && u.o.indexOf(out) < 0) return false;
    if (type && u.t !== type) return false;
    if (!terms.length) return true;
    if (u.text === null) u.text = lower(u.el);
    var h = headText(c);
    return terms.every(function (w) { return u.text.indexOf(w) >= 0 || h.indexOf(w) >= 0; });
  }
  function readHash() {
    var h = new URLSearchParams(location.hash.slice(1));
    if (h.has("q")) q.value = h.get("q");
    if (o && h.has("o")) o.value = h.get("o");
    if (t && h.has("t")) t.value = h.get("t");
    return (parseInt(h.get("p"), 10) || 1) - 1;
  }
  function writeHash() {  // the view is a link: reload or share it with its filters
    var h = new URLSearchParams();
    if (q.value) h.set("q", q.value);
    if (o && o.value) h.set("o", o.value);
    if (t && t.value) h.set("t", t.value);
    if (page) h.set("p", String(page + 1));
    try { history.replaceState(null, "", "#" + h.toString()); } catch (e) { /* some file: URLs refuse */ }
  }
  function apply(startPage) {
    var terms = q.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var out = o ? o.value : "", type = t ? t.value : "";
    shown = []; matched = 0;
    cards.forEach(function (c, i) {
      var hits = c.units.map(function (u) { return unitMatches(c, u, terms, out, type); });
      var n = hits.filter(Boolean).length;
      if (n || (!c.units.length && !terms.length && !out && !type)) { shown.push([i, hits]); matched += n; }
    });
    box.className = out === "chosen" ? "only-chosen" : out === "rejected" ? "only-rejected" : "";
    page = startPage || 0;
    render();
  }
  function render() {
    var size = parseInt(per.value, 10) || data.per_page;
    var pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    var frag = document.createDocumentFragment();
    shown.slice(page * size, (page + 1) * size).forEach(function (entry) {
      var node = cards[entry[0]].tpl.content.firstElementChild.cloneNode(true);
      node.querySelectorAll(".unit").forEach(function (u, k) { u.hidden = !entry[1][k]; });
      frag.appendChild(node);
    });
    box.replaceChildren(frag);
    var first = shown.length ? page * size + 1 : 0, last = Math.min((page + 1) * size, shown.length);
    document.getElementById("status").textContent = "Images " + first + "\\u2013" + last + " of " + shown.length +
      " shown (" + cards.length + " in all); " + matched + " of " + data.records + " records match.";
    document.getElementById("pageinfo").textContent = "page " + (page + 1) + " of " + pages;
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages - 1;
    writeHash();
  }
  function go(d) { page += d; render(); window.scrollTo(0, document.getElementById("records").offsetTop); }
  var timer = null;
  q.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(function () { apply(0); }, 150); });
  [o, t].forEach(function (s) { if (s) s.addEventListener("change", function () { apply(0); }); });
  per.addEventListener("change", function () { page = 0; render(); });
  document.getElementById("prev").addEventListener("click", function () { go(-1); });
  document.getElementById("next").addEventListener("click", function () { go(1); });
  document.getElementById("filters").addEventListener("submit", function (e) { e.preventDefault(); });
  document.addEventListener("keydown", function (e) {
    if (e.target && /INPUT|SELECT|TEXTAREA/.test(e.target.tagName)) return;
    if (e.key === "ArrowRight") go(1); else if (e.key === "ArrowLeft") go(-1);
  });
  apply(readHash());
  // when the first page of cards was on screen, in ms since navigation (tools/bench_view.py reads it)
  document.body.setAttribute("data-ready-ms", String(Math.round(performance.now())));
})();
"""
