"""Preference methods beyond the paper on the tiny model: weighted pairs and mDPO's image term,
each checked against the loss computed by hand from the same log-probs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import EXAMPLE_IMAGES, run_stmed

QUESTIONS = ["What organ is shown?", "Is there a fracture?", "What is the modality?"]


def _pairs(path, margins, extra: dict | None = None):
    images = sorted(EXAMPLE_IMAGES.glob("*.jpg"))
    with open(path, "w") as f:
        for i, m in enumerate(margins):
            rec = {"id": f"p{i}", "image": str(images[i % len(images)]), "question": QUESTIONS[i % 3],
                   "chosen": "The liver, with a lesion.", "rejected": f"No{'.' * (i + 1)}", "margin": m,
                   **((extra or {}).get(i, {}))}
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def policy(tiny_model):
    """A maker of the tiny model under one random (non-zero) LoRA without dropout: policy != reference.
    Each trainer gets its own copy (trl adds a "ref" adapter to a model it is handed with one)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    def make():
        torch.manual_seed(0)
        return get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny_model),
                              LoraConfig(r=8, lora_alpha=64, lora_dropout=0.0, init_lora_weights=False,
                                         target_modules=r".*language_model.*\.(q_proj|v_proj|up_proj)"))

    return make, AutoProcessor.from_pretrained(tiny_model)


def _loss(tiny_model, tmp_path, policy, **options):
    """(trainer loss, batch, model) for the three pairs of margins 1, 2, 6 under ``options``."""
    import torch

    from stmed.records import ErrorSink
    from stmed.train import dpo
    from stmed.train.common import DPOConfig

    make, processor = policy
    model = make()
    data = _pairs(tmp_path / "pairs.jsonl", [1, 2, 6], {2: {"corrupt": {"kind": "mask", "strength": 0.9, "seed": 5}}})
    cfg = DPOConfig(model=str(tiny_model), output_dir=str(tmp_path / "out"), data=str(data), batch_size=3,
                    report_to="none", **options)
    cfg.check()
    dataset, _ = dpo._pairs(cfg, processor, ErrorSink(None))
    trainer = dpo.make_trainer(cfg, model, processor, dataset, share_prefix=True)
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch)), batch, model


def _by_hand(model, batch, beta=0.1):
    """Per pair: the policy and reference log-probs, real and corrupted image."""
    import torch

    from stmed.train.pairs import corrupted_batch, pair_logps

    with torch.no_grad():
        c, r = pair_logps(model, batch).sums()
        with model.disable_adapter():
            rc, rr = pair_logps(model, batch).sums()
        out = {"dpo": -torch.nn.functional.logsigmoid(beta * ((c - rc) - (r - rr)))}
        if "corrupt_prompt_input_ids" in batch:
            bad = corrupted_batch(batch)
            pc = pair_logps(model, bad).sums()[0]
            with model.disable_adapter():
                rpc = pair_logps(model, bad).sums()[0]
            out["image"] = -torch.nn.functional.logsigmoid(beta * ((c - rc) - (pc - rpc)))
    return out


def test_weighted_pairs_scale_trls_loss_by_the_normalised_margin(tiny_model, tmp_path, policy):
    plain, batch, _ = _loss(tiny_model, tmp_path, policy)
    weighted, wbatch, model = _loss(tiny_model, tmp_path, policy, weight="margin")
    assert wbatch["pair_weight"].tolist() == pytest.approx([1 / 3, 2 / 3, 2]), "margins 1, 2, 6 over their mean 3"
    per_pair = _by_hand(model, batch)["dpo"]
    assert plain == pytest.approx(float(per_pair.mean()), rel=1e-5), "unweighted: trl's plain mean"
    w = wbatch["pair_weight"]
    assert weighted == pytest.approx(float((per_pair * w).mean()), rel=1e-5), "each pair's loss times its weight"
    assert abs(weighted - plain) > 1e-4, "the weights must change the loss on these pairs"
    ipo, _, _ = _loss(tiny_model, tmp_path, policy, weight="margin", loss=["ipo"])
    plain_ipo, _, _ = _loss(tiny_model, tmp_path, policy, loss=["ipo"])
    assert ipo != pytest.approx(plain_ipo), "the weights reach trl's other loss types too"


def test_image_term_prefers_the_chosen_answer_on_the_real_image(tiny_model, tmp_path, policy):
    import torch

    loss, batch, model = _loss(tiny_model, tmp_path, policy, image_pref=0.5, weight="margin")
    from stmed.records import ErrorSink
    from stmed.train import dpo
    from stmed.train.common import DPOConfig

    cfg = DPOConfig(model=str(tiny_model), data=str(tmp_path / "pairs.jsonl"), image_pref=0.5)
    specs = [json.loads(s) for s in dpo._pairs(cfg, policy[1], ErrorSink(None))[0]["corrupt"]]
    assert specs[2] == {"kind": "mask", "strength": 0.9, "seed": 5}, "a pair's own corruption is kept"
    assert specs[0]["kind"] == "crop" and specs[0]["strength"] == 0.2 and specs[0]["seed"] != specs[1]["seed"], specs
    assert not torch.equal(batch["corrupt_pixel_values"], batch["pixel_values"]), "the corrupted prompts see other pixels"
    hand = _by_hand(model, batch)
    w = batch["pair_weight"]
    expected = (hand["dpo"] * w).mean() + 0.5 * (hand["image"] * w).mean()
    assert loss == pytest.approx(float(expected), rel=1e-5), (loss, float(expected))
    again, _, _ = _loss(tiny_model, tmp_path, policy, image_pref=0.5, weight="margin")
    assert again == loss, "the corrupted copies are seeded: the same loss twice"


def test_bad_weights_are_one_line_each_and_a_run_logs_the_image_term(tiny_model, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl", [1, "high", None, 3, 0])
    out = tmp_path / "out"
    r = run_stmed("dpo", data, "-m", tiny_model, "-o", out, "--weight", "margin", "--image-pref", "1",
                  "--image-pref-corrupt", "blur:0.1", "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1",
                  "--lora-r", "4", "--lora-alpha", "8")
    assert r.returncode == 1, r.stderr[-2000:]  # trained, with rejected records
    errors = [json.loads(line)["error"] for line in (out / "errors.jsonl").read_text().splitlines()]
    assert errors == [f"{data}:2: --weight margin needs a number >= 0 in field 'margin' (got \"high\")",
                      f"{data}:3: --weight margin needs a number >= 0 in field 'margin' (got null)"], errors
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("image_pref/loss" in row for row in logged), logged
    meta = json.loads((out / "_meta.json").read_text())
    assert meta["config"]["weight"] == "margin" and meta["config"]["image_pref_corrupt"] == "blur:0.1", meta["config"]
    zero = _pairs(tmp_path / "zero.jsonl", [0, 0])
    r = run_stmed("dpo", zero, "-m", tiny_model, "-o", tmp_path / "z", "--weight", "margin", "--dry-run")
    assert r.returncode == 2 and "every pair's weight is 0" in r.stderr, r.stderr[-1000:]
    r = run_stmed("dpo", zero, "-m", tiny_model, "-o", tmp_path / "z", "--image-pref-corrupt", "smudge")
    assert r.returncode == 2 and "--image-pref-corrupt 'smudge': the kind must be one of" in r.stderr, r.stderr
