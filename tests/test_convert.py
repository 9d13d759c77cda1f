"""stmed convert: tiny random checkpoints in the original LLaVA code's layouts (LLaVA-1.5
llava_llama with its CLIP tower only named in config, LLaVA-Med v1.5 llava_mistral with the tower
inside, STLLaVA-Med with SQ-LLaVA's cluster projector, a LoRA run with non_lora_trainables.bin),
converted and checked against a direct transcription of the original forward on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import EXAMPLE_IMAGES, run_stmed

V, D_TEXT, D_VISION = 300, 64, 32  # vocabulary (no <image>), text and vision widths
CLIP = dict(hidden_size=D_VISION, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=56, patch_size=14, projection_dim=32, hidden_act="quick_gelu")


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from make_tiny_model import CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS.splitlines() + ["[INST] [/INST] USER: ASSISTANT: <<SYS>>"] * 3,
                            trainers.BpeTrainer(vocab_size=V, special_tokens=["<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _clip(folder: Path):
    """A tiny CLIP vision tower saved as its own folder (as openai/clip-vit-large-patch14-336 is)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(1)
    model = CLIPVisionModel(CLIPVisionConfig(**CLIP)).eval()
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(folder)
    return model


def _tower_keys(clip) -> dict:
    """The CLIP tower as the original code saves it: model.vision_tower.vision_tower.vision_model.*"""
    return {"model.vision_tower.vision_tower." + ("" if k.startswith("vision_model.") else "vision_model.") + k: v
            for k, v in clip.state_dict().items() if not k.endswith("position_ids")}


def original(folder: Path, clip_dir: Path, *, kind: str = "llava_llama", projector: str = "mlp2x_gelu",
             tower_inside: bool = False, seed: int = 0) -> dict:
    """Write an original-layout checkpoint; returns its tensors (the transcription's weights)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    text_type = {"llava_llama": "llama", "llava_mistral": "mistral"}[kind]
    torch.manual_seed(seed)
    lm_cfg = AutoConfig.for_model(text_type, vocab_size=V, hidden_size=D_TEXT, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    lm = AutoModelForCausalLM.from_config(lm_cfg)
    state = {k: v.contiguous() for k, v in lm.state_dict().items()}
    r = lambda *s: torch.randn(*s) * 0.2  # noqa: E731
    if projector == "mlp2x_gelu":
        state |= {"model.mm_projector.0.weight": r(D_TEXT, D_VISION), "model.mm_projector.0.bias": r(D_TEXT),
                  "model.mm_projector.2.weight": r(D_TEXT, D_TEXT), "model.mm_projector.2.bias": r(D_TEXT)}
    else:  # SQ-LLaVA's Clustering(mm_hidden_size, hidden_size, 256, 2)
        for name in ("c", "v", "f"):
            state |= {f"model.mm_projector.{name}.weight": r(D_VISION, D_VISION), f"model.mm_projector.{name}.bias": r(D_VISION)}
        state |= {"model.mm_projector.sim_alpha": torch.full((1, 1, 1), 1.5), "model.mm_projector.sim_beta": torch.full((1, 1, 1), -0.3),
                  "model.mm_projector.ln_1.weight": torch.ones(D_VISION), "model.mm_projector.ln_1.bias": torch.zeros(D_VISION),
                  "model.mm_projector.mlp.0.weight": r(D_TEXT, D_VISION), "model.mm_projector.mlp.0.bias": r(D_TEXT),
                  "model.mm_projector.mlp.2.weight": r(D_TEXT, D_TEXT), "model.mm_projector.mlp.2.bias": r(D_TEXT)}
    clip = _clip(clip_dir) if not clip_dir.exists() else None
    if tower_inside:
        from transformers import CLIPVisionModel

        state |= _tower_keys(clip or CLIPVisionModel.from_pretrained(clip_dir))
    folder.mkdir(parents=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    config = {**lm_cfg.to_dict(), "model_type": kind, "architectures": ["LlavaLlamaForCausalLM"],
              "mm_vision_tower": "openai/clip-vit-large-patch14-336" if tower_inside else str(clip_dir),
              "mm_hidden_size": D_VISION, "mm_projector_type": projector, "mm_vision_select_layer": -2,
              "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
              "mm_use_im_patch_token": False, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    _tokenizer().save_pretrained(folder)
    return state


def reference_logits(state: dict, clip_dir: Path, kind: str, projector: str, input_ids, pixel_values, image_id: int):
    """The original forward, transcribed: CLIP -> hidden_states[-2] -> drop CLS -> projector ->
    spliced into the embeddings where the image goes -> the language model (llava_arch.py's
    encode_images and prepare_inputs_labels_for_multimodal)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(clip_dir).eval()
    tower = {k[len("model.vision_tower.vision_tower."):]: v for k, v in state.items() if k.startswith("model.vision_tower.")}
    if tower:
        own = clip.state_dict()
        clip.load_state_dict({k if k in own else k.removeprefix("vision_model."): v for k, v in tower.items()}, strict=False)
    with torch.no_grad():
        x = clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        p = {k[len("model.mm_projector."):]: v for k, v in state.items() if k.startswith("model.mm_projector.")}
        if projector == "mlp2x_gelu":
            feats = F.linear(F.gelu(F.linear(x, p["0.weight"], p["0.bias"])), p["2.weight"], p["2.bias"])
        else:
            feats = _cluster_as_written(p, x)
        lm_type = {"llava_llama": "llama", "llava_mistral": "mistral"}[kind]
        cfg = AutoConfig.for_model(lm_type, vocab_size=V, hidden_size=D_TEXT, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        lm = AutoModelForCausalLM.from_config(cfg).eval()
        lm.load_state_dict({k: v for k, v in state.items() if not k.startswith(("model.mm_projector", "model.vision_tower"))})
        ids = input_ids.clone()
        where = ids == image_id
        ids[where] = 0
        embeds = lm.get_input_embeddings()(ids)
        embeds[where] = feats.reshape(-1, D_TEXT)
        return lm(inputs_embeds=embeds).logits


def _cluster_as_written(p: dict, x):
    """SQ-LLaVA's Clustering.forward, line by line as cluster.py writes it (256 centres, 2 rounds)."""
    import torch
    import torch.nn.functional as F

    lin = lambda name, t: F.linear(t, p[f"{name}.weight"], p[f"{name}.bias"])  # noqa: E731
    value = lin("v", x).permute(0, 2, 1)
    feature = lin("f", x)
    pool = torch.nn.AdaptiveAvgPool1d(256)
    centers = pool(x.permute(0, 2, 1))
    centers_feature = pool(feature.permute(0, 2, 1)).permute(0, 2, 1)
    centers = centers.permute(0, 2, 1)
    for _ in range(2):
        centers = lin("c", centers)
        sim = torch.softmax(F.normalize(centers, dim=-1) @ F.normalize(value, dim=-1), dim=-2)
        centers = sim @ feature
    cos = F.normalize(centers, dim=-1) @ F.normalize(x, dim=-1).transpose(-2, -1)
    similarity = torch.sigmoid(p["sim_beta"] + p["sim_alpha"] * cos)
    _, max_idx = similarity.max(dim=1, keepdim=True)
    mask = torch.zeros_like(similarity)
    mask.scatter_(1, max_idx, 1.0)
    similarity = similarity * mask
    out = ((feature.unsqueeze(dim=1) * similarity.unsqueeze(dim=-1)).sum(dim=2) + centers_feature) / (
        mask.sum(dim=-1, keepdim=True) + 1.0)
    out = x + (out.unsqueeze(dim=2) * similarity.unsqueeze(dim=-1)).sum(dim=1)
    h = lin("mlp.0", out)
    return lin("mlp.2", h * torch.sigmoid(1.702 * h))


CASES = {  # name: (model_type, projector, tower inside the checkpoint, template)
    "llava-1.5": ("llava_llama", "mlp2x_gelu", False, "vicuna_v1"),
    "llava-med-v1.5": ("llava_mistral", "mlp2x_gelu", True, "mistral_instruct"),
    "stllava-med": ("llava_llama", "cluster", True, "vicuna_v1"),
}


@pytest.fixture(scope="module")
def tools_path():
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(scope="module", params=list(CASES))
def converted(request, tmp_path_factory, tools_path):
    from stmed.convert import ConvertOptions, convert

    kind, projector, inside, _ = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    clip_dir = root / "clip"
    state = original(root / "orig", clip_dir, kind=kind, projector=projector, tower_inside=inside)
    if request.param == "llava-1.5":  # through the command line once: a JSON line on stdout, a sentence on stderr
        r = run_stmed("convert", root / "orig", "-o", root / "hf")
        assert r.returncode == 0, r.stderr[-2000:]
        assert "stmed: converted" in r.stderr and "vicuna_v1 template" in r.stderr, r.stderr
        done = json.loads(r.stdout)
        r = run_stmed("convert", root / "orig", "-o", root / "hf")
        assert r.returncode == 2 and "the folder is not empty; pass --overwrite" in r.stderr
    else:
        done = convert(root / "orig", root / "hf", ConvertOptions(vision_tower=str(clip_dir) if inside else None))
    return request.param, root, state, done


def test_converted_logits_equal_the_original_forward(converted):
    import torch
    from PIL import Image

    from stmed.core.chat import render
    from stmed.core.model import ModelSpec, load_model

    name, root, state, done = converted
    kind, projector, _, template = CASES[name]
    assert done["template"] == template and done["projector"] == projector and done["pad_to_square"]
    loaded = load_model(ModelSpec(str(root / "hf"), device="cpu"))
    proc = loaded.processor
    assert proc.image_processor.do_pad, "image_aspect_ratio pad: the processor pads to square"
    cfg = loaded.model.config
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (-2, "default")
    prompt = render(proc, [{"role": "user", "content": "Is there a fracture?"}])
    expected = {"vicuna_v1": "A chat between a curious user and an artificial intelligence assistant. The assistant "
                             "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
                             "Is there a fracture? ASSISTANT:",
                "mistral_instruct": "[INST] <image>\nIs there a fracture? [/INST]"}[template]
    assert prompt == expected
    # a system text (the vuser strategy's) goes where the original puts it: in place of the default
    # system line (vicuna_v1), or in <<SYS>> at the start of the first [INST] (mistral_instruct)
    with_system = render(proc, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"}])
    assert with_system == {"vicuna_v1": "Be brief. USER: <image>\nQ? ASSISTANT:",
                           "mistral_instruct": "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nQ? [/INST]"}[template]
    image = Image.open(sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0]).convert("RGB")
    enc = proc(images=[image], text=[prompt], return_tensors="pt")
    image_id = loaded.model.config.image_token_id
    assert image_id == V and (enc["input_ids"] == image_id).sum() == 16, "16 patches of a 56-pixel CLIP"
    with torch.no_grad():
        got = loaded.model(**enc).logits[..., :V]
    want = reference_logits(state, root / "clip", kind, projector, enc["input_ids"], enc["pixel_values"], image_id)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("converted", ["stllava-med"], indirect=True)  # the cluster one, whose class stmed registers
def test_stages_run_on_a_converted_checkpoint(converted, tmp_path):
    """inspect, answer and dpo through the CLI; dpo supervises the template's end token."""
    name, root, _, _ = converted
    model = root / "hf"
    image = sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0]
    r = run_stmed("inspect", image, "-m", model, "-n", "1", "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "a", "image": str(image), "question": "Is there a fracture?"}) + "\n")
    r = run_stmed("answer", q, "-m", model, "--max-new-tokens", "4", "-o", tmp_path / "a.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_stmed("answer", q, "-m", model, "--engine", "vllm", "-o", tmp_path / "v.jsonl")
    assert r.returncode == 2 and "cluster projector, which vLLM does not implement" in r.stderr, r.stderr
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "image": str(image), "question": "Is there a fracture?",
                                 "chosen": "Yes, in the right lobe.", "rejected": "No."}) + "\n")
    r = run_stmed("dpo", pairs, "-m", model, "-o", tmp_path / "out", "--dry-run", "--json", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    shown = json.loads(r.stdout)
    assert shown["chosen_tokens"][-1] == "</s>" and shown["rejected_tokens"][-1] == "</s>", shown["chosen_tokens"]
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"id": "c", "image": str(image), "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A chest x-ray."}]}) + "\n")
    r = run_stmed("sft", conv, "-m", model, "-o", tmp_path / "out", "--dry-run", "--json", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    trained = [seg["tokens"] for seg in json.loads(r.stdout)["segments"] if seg["supervised"]]
    assert len(trained) == 1 and trained[0][-1] == "</s>", trained
    r = run_stmed("dpo", pairs, "-m", model, "-o", tmp_path / "dpo", "--max-steps", "1", "--batch-size", "1",
                  "--grad-accum", "1", "--lora-r", "4", "--lora-alpha", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "dpo" / "adapter_config.json").exists()


def test_lora_checkpoint_merges_onto_its_base(tmp_path, tools_path):
    """A --lora_enable run: adapter weights and non_lora_trainables.bin, merged onto --model-base."""
    import torch

    from stmed.convert import ConvertOptions, convert

    state = original(tmp_path / "base", tmp_path / "clip", kind="llava_llama")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "config.json").write_text((tmp_path / "base" / "config.json").read_text())
    torch.manual_seed(3)
    a, b = torch.randn(4, D_TEXT) * 0.1, torch.randn(D_TEXT, 4) * 0.1
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    # STLLaVA-Med tunes the CLIP tower by LoRA as well
    va, vb = torch.randn(4, D_VISION) * 0.1, torch.randn(D_VISION, 4) * 0.1
    vkey = "base_model.model.model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"
    torch.save({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b,
                f"{vkey}.lora_A.weight": va, f"{vkey}.lora_B.weight": vb}, lora / "adapter_model.bin")
    (lora / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    projector = {k: v + 1.0 for k, v in state.items() if k.startswith("model.mm_projector.")}
    torch.save({f"base_model.model.{k}": v for k, v in projector.items()}, lora / "non_lora_trainables.bin")
    r = run_stmed("convert", lora, "-o", tmp_path / "nobase")
    assert r.returncode == 2 and r.stderr.startswith("stmed: error: ") and "--model-base" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    r = run_stmed("convert", lora, "-o", tmp_path / "novit", "--model-base", tmp_path / "base")
    assert r.returncode == 2 and "the adapter tunes the vision tower; pass --vision-tower" in r.stderr, r.stderr
    convert(lora, tmp_path / "hf", ConvertOptions(model_base=str(tmp_path / "base"), vision_tower=str(tmp_path / "clip")))
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(tmp_path / "clip").state_dict()
    base_vq = next(v for k, v in clip.items() if k.endswith("encoder.layers.0.self_attn.q_proj.weight"))

    out = load_file(tmp_path / "hf" / "model.safetensors")
    q = next(v for k, v in out.items() if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert torch.allclose(q, state["model.layers.0.self_attn.q_proj.weight"] + 2.0 * (b @ a), atol=1e-6)
    l1 = next(v for k, v in out.items() if k.endswith("multi_modal_projector.linear_1.weight"))
    assert torch.equal(l1, projector["model.mm_projector.0.weight"])
    vq = next(v for k, v in out.items() if "vision" in k and k.endswith("encoder.layers.0.self_attn.q_proj.weight"))
    assert torch.allclose(vq, base_vq + 2.0 * (vb @ va), atol=1e-6)


def test_a_checkpoint_in_parts_takes_its_projector_file(tmp_path, tools_path):
    """STLLaVA-Med's -llm / -vit / -projector parts: the projector from mm_projector.bin."""
    import torch
    from safetensors.torch import load_file, save_file

    from stmed.convert import ConvertOptions, convert

    src = tmp_path / "llm"
    state = original(src, tmp_path / "clip", kind="llava_llama")
    save_file({k: v for k, v in state.items() if "mm_projector" not in k}, src / "model.safetensors")
    projector = {k: v * 2 for k, v in state.items() if "mm_projector" in k}
    torch.save(projector, tmp_path / "mm_projector.bin")
    # the ViT LoRA as STLLaVA-Med's builder.py loads it (lora_pt: peft on LLaVA's CLIPVisionTower)
    vit = tmp_path / "vit-lora"
    vit.mkdir()
    a, b = torch.randn(2, D_VISION) * 0.1, torch.randn(64, 2) * 0.1
    key = "base_model.model.vision_tower.vision_model.encoder.layers.1.mlp.fc1"
    save_file({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}, vit / "adapter_model.safetensors")
    (vit / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    convert(src, tmp_path / "hf", ConvertOptions(projector=str(tmp_path / "mm_projector.bin"), vision_lora=str(vit)))
    out = load_file(tmp_path / "hf" / "model.safetensors")
    l2 = next(v for k, v in out.items() if k.endswith("multi_modal_projector.linear_2.weight"))
    assert torch.equal(l2, projector["model.mm_projector.2.weight"])
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(tmp_path / "clip").state_dict()
    fc1 = next(v for k, v in clip.items() if k.endswith("encoder.layers.1.mlp.fc1.weight"))
    got = next(v for k, v in out.items() if "vision" in k and k.endswith("encoder.layers.1.mlp.fc1.weight"))
    assert torch.allclose(got, fc1 + b @ a, atol=1e-6)


@pytest.mark.parametrize("damage, message", [
    ("projector", "no projector weights (model.mm_projector.*)"),
    ("hidden", "the projector maps 32 to 64 features, but the vision tower gives 48"),
    ("lm", "the language model lacks"),
    ("anyres", "image_aspect_ratio anyres"),
    ("truncated weights", "a file of the checkpoint is damaged or cut short (SafetensorError"),
    ("torn config", "a file of the checkpoint is damaged or cut short (JSONDecodeError"),
])
def test_a_truncated_or_mismatched_checkpoint_is_one_line(tmp_path, tools_path, damage, message):
    from safetensors.torch import load_file, save_file

    src = tmp_path / "orig"
    original(src, tmp_path / "clip", kind="llava_llama")
    state = load_file(src / "model.safetensors")
    if damage == "projector":
        state = {k: v for k, v in state.items() if "mm_projector" not in k}
    elif damage == "lm":
        state = {k: v for k, v in state.items() if "layers.1.mlp" not in k}
    elif damage == "anyres":
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**cfg, "image_aspect_ratio": "anyres"}))
    elif damage == "hidden":  # a vision tower of another width than the projector was trained on
        cfg = json.loads((tmp_path / "clip" / "config.json").read_text())
        (tmp_path / "clip" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 48}))
    save_file(state, src / "model.safetensors")
    if damage == "truncated weights":  # a download cut short
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    if damage == "torn config":
        data = (src / "config.json").read_bytes()
        (src / "config.json").write_bytes(data[: len(data) // 2])
    r = run_stmed("convert", src, "-o", tmp_path / "hf")
    assert r.returncode == 2 and r.stderr.startswith("stmed: error: convert ") and message in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


MISTRAL_INSTRUCT_STRINGS = (  # mistralai/Mistral-7B-Instruct-v0.2's template: string content only
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


@pytest.mark.parametrize("converted", ["llava-med-v1.5"], indirect=True)
def test_a_string_content_template_renders_image_turns_as_the_original_code(converted, tmp_path):
    """A converted LLaVA-Med whose only template is Mistral-Instruct's: the image token and a newline
    go before the question (said once on stderr, recorded in answer_prompt, shown by --dry-run)."""
    import shutil

    name, root, _, _ = converted
    model = shutil.copytree(root / "hf", tmp_path / "med")
    for f in ("chat_template.jinja", "chat_template.json"):
        (model / f).unlink(missing_ok=True)
    for f in ("processor_config.json", "tokenizer_config.json"):
        cfg = json.loads((model / f).read_text())
        cfg.pop("chat_template", None)
        if f == "tokenizer_config.json":
            cfg["chat_template"] = MISTRAL_INSTRUCT_STRINGS
        (model / f).write_text(json.dumps(cfg))
    from stmed.core.chat import render
    from stmed.core.model import ModelSpec, load_processor

    proc = load_processor(ModelSpec(str(model)))
    assert render(proc, [{"role": "user", "content": "Is it normal?"}]) == "<s>[INST] <image>\nIs it normal? [/INST]"
    image = sorted(EXAMPLE_IMAGES.glob("*.jpg"))[0]
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "a", "image": str(image), "question": "Is it normal?"}) + "\n")
    r = run_stmed("answer", q, "-m", model, "--max-new-tokens", "4", "-o", tmp_path / "a.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("the chat template takes string content only") == 1, r.stderr
    rec = json.loads((tmp_path / "a.jsonl").read_text())
    assert rec["answer_prompt"]["rendering"].startswith("string-content"), rec["answer_prompt"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({**rec, "chosen": "Yes.", "rejected": "No."}) + "\n")
    r = run_stmed("dpo", pairs, "-m", model, "-o", tmp_path / "out", "--dry-run", "--json", "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    shown = json.loads(r.stdout)
    assert shown["rendering"].startswith("string-content") and shown["chosen_tokens"][-1] == "</s>"
    assert "<image>" in shown["prompt_tokens"] and "[/INST]" in "".join(shown["prompt_tokens"]).replace("▁", " ")


def test_stllava_med_as_released_a_cluster_projector_over_llava_15(tmp_path, tools_path):
    """ZachSun/stllava-med-7b as its builder.py loads it: LoRA + non_lora_trainables.bin (the cluster
    projector) over liuhaotian/llava-v1.5-7b (an mlp2x_gelu projector, replaced)."""
    import torch
    from safetensors.torch import load_file

    from stmed.convert import ConvertOptions, convert

    original(tmp_path / "llava-1.5", tmp_path / "clip", kind="llava_llama")
    cluster = original(tmp_path / "donor", tmp_path / "clip", kind="llava_llama", projector="cluster", seed=5)
    release = tmp_path / "stllava-med-7b"
    release.mkdir()
    cfg = json.loads((tmp_path / "donor" / "config.json").read_text())
    (release / "config.json").write_text(json.dumps(cfg))
    torch.save({f"base_model.model.{k}": v for k, v in cluster.items() if "mm_projector" in k},
               release / "non_lora_trainables.bin")
    done = convert(release, tmp_path / "hf", ConvertOptions(model_base=str(tmp_path / "llava-1.5")))
    assert done["projector"] == "cluster"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "stmed_llava_cluster"
    out = load_file(tmp_path / "hf" / "model.safetensors")
    assert not any(k.endswith("multi_modal_projector.linear_1.weight") and not torch.equal(
        v, cluster["model.mm_projector.mlp.0.weight"]) for k, v in out.items())
    assert any(k.endswith("multi_modal_projector.sim_alpha") for k in out)


def test_chat_template_flag_and_its_old_name(tmp_path, tools_path):
    """--chat-template picks the template written; --template still does, with a one-line note."""
    src = tmp_path / "orig"
    original(src, tmp_path / "clip", kind="llava_llama")
    r = run_stmed("convert", src, "-o", tmp_path / "new", "--chat-template", "mistral_instruct")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["template"] == "mistral_instruct" and "note:" not in r.stderr, r.stderr
    r = run_stmed("convert", src, "-o", tmp_path / "old", "--template", "mistral_instruct")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.splitlines()[0] == ("stmed: note: stmed convert --template is now --chat-template; the old "
                                        "spelling goes in the next release"), r.stderr
    assert r.stderr.count("stmed: note:") == 1 and json.loads(r.stdout)["template"] == "mistral_instruct"
    written = sorted(f.name for f in (tmp_path / "new").iterdir())
    assert written == sorted(f.name for f in (tmp_path / "old").iterdir()) and "model.safetensors" in written
    for name in written:  # the same folder either way
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name
    assert "[INST]" in (tmp_path / "new" / "chat_template.jinja").read_text()
    r = run_stmed("convert", src, "-o", tmp_path / "bad", "--chat-template", "llama3")
    assert r.returncode == 2 and r.stderr == ("stmed: error: --chat-template 'llama3': expected one of vicuna_v1, "
                                              "mistral_instruct\n"), r.stderr
