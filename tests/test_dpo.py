"""stmed dpo on the tiny model: it learns a preference, merges, resumes, reads both pair formats."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLE_IMAGES, ROOT, run_stmed

CHOSEN = "The liver, with a hypodense lesion."
REJECTED = "No, the bone cortex is intact."
QUESTIONS = ["What organ is shown?", "Is there a fracture?", "What is the modality?", "Where is the abnormality?"]
FAST = ["--batch-size", "4", "--grad-accum", "1", "--lr", "2e-3", "--lora-r", "8", "--lora-alpha", "16", "-q"]


def _images():
    return sorted(EXAMPLE_IMAGES.glob("*.jpg"))


def _write_pairs(path, n=16, stllava=False, extra=()):
    images = _images()
    with open(path, "w") as f:
        for i in range(n):
            img, q = str(images[i % len(images)]), QUESTIONS[i % len(QUESTIONS)]
            if stllava:
                conv = lambda a: [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]  # noqa: E731
                rec = {"image": img, "chosen_conversations": conv(CHOSEN), "reject_conversations": conv(REJECTED)}
            else:
                rec = {"id": f"p{i}", "image": img, "question": q, "chosen": CHOSEN, "rejected": REJECTED}
            f.write(json.dumps(rec) + "\n")
        for rec in extra:
            f.write(json.dumps(rec) + "\n")
    return path


def _log(outdir):
    rows = [json.loads(line) for line in (outdir / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]  # the last row is the trainer's closing summary


def _margin(model, processor, question, image):
    """Summed log-prob of CHOSEN minus REJECTED for one prompt."""
    import torch

    from stmed.images import load_image
    from stmed.train.data import encode_pair
    from stmed.train.pairs import PairCollator, pair_logps

    ex = {"images": [load_image(image)[0]],  # unpadded: dpo's default, like answer's
          **encode_pair(processor, [{"role": "user", "content": question}], CHOSEN, REJECTED)}
    with torch.no_grad():
        c, r = pair_logps(model, PairCollator(processor)([ex])).sums()
    return float(c - r)


def test_shared_prefix_gives_the_same_logps_and_gradients(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stmed.images import load_image
    from stmed.train.pairs import PairCollator, concat_logps, shared_prefix_logps

    processor = AutoProcessor.from_pretrained(tiny_model)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny_model),
                           LoraConfig(r=8, target_modules=r".*language_model.*\.(q_proj|v_proj|up_proj)",
                                      init_lora_weights=False))
    from stmed.train.data import encode_pair

    answers = [("Yes.", "The liver, with a hypodense lesion in the right lobe."), ("Left lobe.", "No.")]
    batch = PairCollator(processor)([
        {"images": [load_image(img)[0]], **encode_pair(processor, [{"role": "user", "content": q}], c, r)}
        for img, q, (c, r) in zip(_images(), ["Is it?", "Where is the abnormality located in this scan?"], answers)])
    shared, concat = shared_prefix_logps(model, batch), concat_logps(model, batch)
    assert torch.allclose(shared.log_probs, concat.log_probs, atol=1e-4), "shared prompt changed the log-probs"
    params = [p for p in model.parameters() if p.requires_grad]
    g1 = torch.autograd.grad(shared.log_probs.sum(), params)
    g2 = torch.autograd.grad(concat.log_probs.sum(), params)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g1, g2)), "gradients differ through the cache"


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One DPO run (stmed pairs, two bad ones) with --merge, and one on the same pairs in STLLaVA-Med format."""
    tmp = tmp_path_factory.mktemp("dpo")
    bad = [{"id": "gone", "image": "missing.jpg", "question": "q", "chosen": "a", "rejected": "b"},
           {"id": "same", "image": str(_images()[0]), "question": "q", "chosen": "a", "rejected": "a"}]
    ours = run_stmed("dpo", _write_pairs(tmp / "pairs.jsonl", extra=bad), "-m", tiny_model, "-o", tmp / "out",
                     "--max-steps", "8", "--merge", *FAST)
    theirs = run_stmed("dpo", _write_pairs(tmp / "stllava.jsonl", stllava=True), "-m", tiny_model,
                       "-o", tmp / "out2", "--max-steps", "8", *FAST)
    return tmp, ours, theirs


def test_dpo_learns_a_synthetic_preference(trained, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tmp, proc, _ = trained
    assert proc.returncode == 1, f"two bad pairs should give exit 1: {proc.stderr}"
    assert proc.stdout == "", "training writes nothing to stdout"
    errors = [json.loads(x) for x in (tmp / "out" / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["gone", "same"] and errors[0]["where"].endswith("pairs.jsonl:17")
    log = _log(tmp / "out")
    assert log[-1]["rewards/margins"] > log[0]["rewards/margins"], "logged margins did not grow"
    processor = AutoProcessor.from_pretrained(tmp / "out")
    base = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    before = [_margin(base, processor, q, img) for q, img in zip(QUESTIONS, _images())]
    policy = PeftModel.from_pretrained(base, tmp / "out").eval()
    after = [_margin(policy, processor, q, img) for q, img in zip(QUESTIONS, _images())]
    assert all(a > b + 0.5 for a, b in zip(after, before)), f"margin vs reference did not grow: {before} -> {after}"
    meta = json.loads((tmp / "out" / "_meta.json").read_text())
    assert meta["config"]["beta"] == 0.1 and meta["data"]["pairs"] == 16 and len(meta["data"]["sha256"]) == 64
    assert meta["data"]["images"]["pad_square"] is False, "dpo must default to answer's images: unpadded"


def test_merged_model_matches_base_plus_adapter(trained, tiny_model):
    from transformers import AutoModelForImageTextToText

    from stmed.core.generate import Generator, GenRequest, SamplingParams
    from stmed.core.model import ModelSpec, load_model
    from stmed.images import load_image

    tmp = trained[0]
    merged_dir = tmp / "out" / "merged"
    assert AutoModelForImageTextToText.from_pretrained(merged_dir) is not None
    image = load_image(_images()[1])[0]
    req = [GenRequest(messages=[{"role": "user", "content": q}], image=image) for q in QUESTIONS[:2]]
    params = SamplingParams(max_new_tokens=8)
    merged = [o.texts for _, o in Generator(load_model(ModelSpec(str(merged_dir), device="cpu"))).run(req, params)]
    adapted = [o.texts for _, o in Generator(load_model(ModelSpec(str(tiny_model), str(tmp / "out"),
                                                                  device="cpu"))).run(req, params)]
    assert merged == adapted and any(t[0] for t in merged), f"merged {merged} != base+adapter {adapted}"


def test_stllava_format_trains_the_same(trained):
    tmp, _, proc = trained
    assert proc.returncode == 0, proc.stderr
    ours, theirs = _log(tmp / "out"), _log(tmp / "out2")
    assert [round(r["loss"], 4) for r in ours] == [round(r["loss"], 4) for r in theirs], \
        "the same pairs in STLLaVA-Med format should train identically"


def test_resume_after_kill_reaches_the_same_step(tiny_model, tmp_path):
    pairs, out = _write_pairs(tmp_path / "pairs.jsonl", n=8), tmp_path / "out"
    args = [sys.executable, "-m", "stmed.cli", "dpo", str(pairs), "-m", str(tiny_model), "-o", str(out),
            "--max-steps", "6", "--save-steps", "1", "--batch-size", "2", *FAST[2:]]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint-2" / "trainer_state.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "adapter_model.safetensors").exists(), "run finished before it could be killed"
    again = run_stmed("dpo", pairs, "-m", tiny_model, "-o", out, "--max-steps", "6", "--save-steps", "1",
                      "--batch-size", "2", *FAST[2:])
    assert again.returncode == 2 and "--resume" in again.stderr, "a rerun without --resume must not mix runs"
    resumed = run_stmed("dpo", pairs, "-m", tiny_model, "-o", out, "--max-steps", "6", "--save-steps", "1",
                        "--batch-size", "2", "--resume", *FAST[2:])
    assert resumed.returncode == 0, resumed.stderr
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert (out / "adapter_model.safetensors").exists()


def test_no_usable_pairs_and_bad_config_stop_early(tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "nope.jpg", "question": "q", "chosen": "a", "rejected": "b"}) + "\n")
    proc = run_stmed("dpo", bad, "-m", tiny_model, "-o", tmp_path / "o")
    assert proc.returncode == 2 and "no usable preference pairs" in proc.stderr and "Traceback" not in proc.stderr
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("beta: 0.2\nlearnig_rate: 1e-5\n")
    proc = run_stmed("dpo", bad, "-m", tiny_model, "-o", tmp_path / "o", "--config", cfg)
    assert proc.returncode == 2 and f"{cfg}:2: unknown key 'learnig_rate'" in proc.stderr
    assert "learning_rate" in proc.stderr, "a misspelt key should get a suggestion"
    proc = run_stmed("dpo", bad, "-m", tiny_model, "-o", tmp_path / "o", "--loss", "sigmod")
    assert proc.returncode == 2 and "did you mean 'sigmoid'" in proc.stderr


def test_weight_decay_from_the_config_file_reaches_the_trainer(tmp_path):
    import typer
    from transformers import TrainingArguments
    from typer.testing import CliRunner

    from stmed.options import options
    from stmed.train.common import DPOConfig, SFTConfig, trainer_kwargs

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("weight_decay: 0.1\nwarmup_ratio: 0.05\nmodel: m\n")
    for cls in (DPOConfig, SFTConfig):
        built = []

        def main(cfg):  # the command's way: its flags, and --config, build cfg
            built.append(cfg)

        main.__annotations__ = {"cfg": cls}
        app = typer.Typer()
        app.command()(options(cls)(main))
        r = CliRunner().invoke(app, ["--config", str(cfg_file), "-o", str(tmp_path / "o")])
        assert r.exit_code == 0 and built[0].model == "m", r.output
        args = TrainingArguments(**trainer_kwargs(built[0], False))
        assert args.weight_decay == 0.1 and args.warmup_steps == 0.05, (args.weight_decay, args.warmup_steps)


@pytest.mark.parametrize("command", ["dpo", "sft"])
def test_a_model_that_does_not_load_is_one_line_and_leaves_no_outdir(command, tiny_model, tmp_path):
    import shutil

    pairs = _write_pairs(tmp_path / "pairs.jsonl", n=2)
    if command == "sft":  # stmed QA records train as one-turn conversations
        pairs.write_text("".join(json.dumps({"id": f"c{i}", "image": str(img), "question": "What organ?",
                                             "answers": ["The liver."]}) + "\n"
                                 for i, img in enumerate(_images()[:2])))
    # a folder with the processor but no weights: the processor loads, the model does not
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    for model in ("/nonexistent/model", no_weights):
        out = tmp_path / f"out-{Path(model).name}"
        proc = run_stmed(command, pairs, "-m", model, "-o", out)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert "Traceback" not in proc.stderr and any(f"-m {model}: cannot load" in x for x in lines), proc.stderr
        assert not out.exists(), f"a run that never started left {sorted(out.rglob('*'))}"


def test_trl_without_what_the_step_uses_is_one_clear_error(monkeypatch):
    import importlib.metadata as md
    import re

    from trl import DPOTrainer

    from stmed.errors import InputError
    from stmed.train.dpo import TRL_NEEDED, check_trl

    pinned = re.search(r'"trl([^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert pinned == TRL_NEEDED, "pyproject.toml and stmed.train.dpo must name the same trl range"
    check_trl()  # the installed trl is the tested one
    monkeypatch.delattr(DPOTrainer, "_compute_loss")
    with pytest.raises(InputError) as e:
        check_trl()
    assert f"trl {md.version('trl')} is installed" in str(e.value) and f"trl{TRL_NEEDED}" in str(e.value)


def test_pad_square_defaults_off_and_the_flag_is_recorded(tiny_model, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor

    from stmed.records import ErrorSink
    from stmed.train.data import load_pairs

    wide = tmp_path / "wide.png"
    Image.new("RGB", (120, 60), (200, 30, 30)).save(wide)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"w{i}", "image": str(wide), "question": q, "chosen": CHOSEN,
                                         "rejected": REJECTED}) + "\n" for i, q in enumerate(QUESTIONS)))
    processor = AutoProcessor.from_pretrained(tiny_model)
    rows, settings = load_pairs(str(pairs), processor, errors=ErrorSink(None))
    assert rows[0]["images"][0].size == (120, 60), "pairs must be scored on the pixels answer saw (no pad)"
    assert settings == {"pad_square": False, "max_pixels": None}
    out = tmp_path / "out"
    proc = run_stmed("dpo", pairs, "-m", tiny_model, "-o", out, "--max-steps", "1", "--pad-square", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "_meta.json").read_text())["config"]["pad_square"] is True
    for command in ("dpo", "sft"):
        assert "--no-pad-square" in run_stmed(command, "--help", env={"COLUMNS": "200"}).stdout


def _tiny_qwen2_vl():
    """A random Qwen2-VL (M-RoPE) small enough for the CPU, with a hand-made batch of two pairs."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    image, start, end = 100, 102, 103
    cfg = Qwen2VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                          "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14, temporal_patch_size=2,
                           spatial_merge_size=2, in_chans=3, mlp_ratio=2),
        image_token_id=image, video_token_id=101, vision_start_token_id=start, vision_end_token_id=end)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    tokens = [start] + [image] * 4 + [end]  # a 4x4 patch grid merged 2x2: four image tokens
    prompts = torch.tensor([[0, 0, 5, 6, *tokens, 7], [5, 6, 8, 9, *tokens, 7]])  # left padded
    answers = torch.tensor([[10, 11, 12], [13, 14, 0], [15, 0, 0], [16, 17, 18]])  # c0, r0, c1, r1
    batch = {"prompt_input_ids": prompts, "prompt_attention_mask": (prompts != 0).long(),
             "completion_ids": answers, "completion_attention_mask": (answers != 0).long(),
             "pixel_values": torch.randn(32, 3 * 2 * 14 * 14), "image_grid_thw": torch.tensor([[1, 4, 4]] * 2),
             "prompt_mm_token_type_ids": (prompts == image).long()}
    return model, batch


def test_mrope_models_fall_back_to_one_sequence_per_answer():
    import torch

    from stmed.train.pairs import pair_logps, shared_prefix_logps, uses_mrope

    model, b = _tiny_qwen2_vl()
    assert uses_mrope(model)
    with pytest.raises(ValueError, match="M-RoPE"):
        shared_prefix_logps(model, b)
    with torch.no_grad():
        chosen, rejected = pair_logps(model, b, share_prefix=True).sums()
        want = []  # each prompt+answer alone, unpadded, positions left to the model (its 3-D rope index)
        for k in range(4):
            i, keep_p, keep_a = k // 2, b["prompt_attention_mask"][k // 2].bool(), b["completion_attention_mask"][k].bool()
            prompt, ans = b["prompt_input_ids"][i][keep_p], b["completion_ids"][k][keep_a]
            ids = torch.cat([prompt, ans])[None]
            types = torch.cat([b["prompt_mm_token_type_ids"][i][keep_p], torch.zeros_like(ans)])[None]
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=types,
                           pixel_values=b["pixel_values"][16 * i:16 * (i + 1)], image_grid_thw=b["image_grid_thw"][i:i + 1]).logits
            want.append(float(logits[0, len(prompt) - 1:-1].log_softmax(-1).gather(-1, ans[:, None]).sum()))
    got = [float(chosen[0]), float(rejected[0]), float(chosen[1]), float(rejected[1])]
    assert got == pytest.approx(want, abs=1e-4), f"M-RoPE pair log-probs {got} != per-sequence {want}"
