"""Build a tiny random LLaVA, offline and deterministic, for tests, the demo and CPU benchmarks.

It has the same parts as a real checkpoint (CLIP vision tower, projector, Llama text model, a
BPE tokenizer trained here with `tokenizers`, a processor and a LLaVA-1.5 chat template), is
saved with save_pretrained, and loads through the same code users run on real models.

    python tools/make_tiny_model.py OUTDIR [--seed 0]
    python tools/make_tiny_model.py OUTDIR --shape llava-7b   # random bf16 LLaVA-1.5-7B shape (GPU bench)
    python tools/make_tiny_model.py OUTDIR --from-processor tests/fixtures/processors/qwen2-vl-2b-instruct

``--from-processor FOLDER`` builds a tiny random model around a REAL checkpoint's processor
files (tokenizer, chat template, image processor, config): the architecture comes from the
config, the sizes are shrunk, and the vocabulary, special and image token ids and the image
settings are kept, so tests see the exact tokens and templates of that model family.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# LLaVA-1.5's conversation format, written as a chat template so every code path sees one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = namespace(v='') %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{% set text.v = text.v + '<image>\n' %}"
    "{% elif part['type'] == 'text' %}{% set text.v = text.v + part['text'] %}{% endif %}"
    "{% endfor %}{% set text = text.v %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ text + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + text + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + text + '</s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Enough medical and everyday English for a byte-level BPE to learn sensible merges.
CORPUS = """
The image shows a chest x-ray with clear lungs and a normal heart size.
Is there a fracture of the left femur? No, the bone cortex is intact.
What organ is shown in this CT scan? The liver, with a hypodense lesion in the right lobe.
Where is the abnormality located? In the left upper lobe of the lung, near the hilum.
Is this an MRI or a CT? This is an axial T2-weighted MRI of the brain.
Describe the image in detail. A frontal radiograph of the abdomen shows dilated small bowel loops.
What is the modality? Ultrasound of the kidney shows hydronephrosis.
Are the ventricles enlarged? Yes, there is mild ventriculomegaly without midline shift.
Which side is the pleural effusion on? The right side, with blunting of the costophrenic angle.
What plane is this image taken in? The coronal plane.
Is there evidence of pneumothorax? There is no pneumothorax and no consolidation.
The pathology slide shows glands with nuclear atypia, consistent with adenocarcinoma.
How many kidneys are visible? Two kidneys of normal size and shape are visible.
What does the arrow point to? The arrow points to a calcified mass in the pancreas.
Is the aorta dilated? No, the abdominal aorta has a normal calibre.
Can you see the spleen? Yes, the spleen is enlarged and measures fifteen centimetres.
As a curious user I would ask: what findings suggest infection, and where are they?
Question: is the lesion enhancing after contrast? Answer: yes, with a ring of enhancement.
""" * 3


def train_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    from tokenizers import processors

    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=4096,
    )


# Each shape: (CLIP vision tower, Llama text model, image tokens). "llava-7b" is LLaVA-1.5-7B's:
# CLIP ViT-L/14-336 (576 image tokens) and Llama-7B. "tiny" has 16 image tokens (4x4 patches).
SHAPES = {
    "tiny": (dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=56, patch_size=14, projection_dim=32),
             dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2), 16),
    "llava-7b": (dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=336, patch_size=14, projection_dim=768),
                 dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32), 576),
}


def llava_config(shape: str, vocab_size: int, image_token_id: int, pad_id: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision, text, image_tokens = SHAPES[shape]
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(**text, vocab_size=vocab_size, max_position_embeddings=4096,
                                pad_token_id=pad_id, bos_token_id=1, eos_token_id=2),
        image_token_id=image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=image_tokens,
    )


def image_processor_class():
    """The PIL image processor: it needs no torchvision (transformers 5.x names it *Pil)."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def build_in_memory(shape: str = "tiny", *, seed: int = 0, device: str = "cpu"):
    """(model, processor) with random weights, built on ``device`` without touching disk."""
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = train_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    size = 56 if shape == "tiny" else 336
    image_processor = image_processor_class()(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )
    if shape == "tiny":
        config, dtype = llava_config("tiny", len(tokenizer), image_token_id, tokenizer.pad_token_id), torch.float32
    else:
        # 32064 as in llava-1.5-7b-hf; ids past the tokenizer's vocabulary decode to nothing.
        config, dtype = llava_config(shape, 32064, image_token_id, tokenizer.pad_token_id), torch.bfloat16
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the final dtype: a 7B model never exists in fp32
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor


# Sizes of a tiny model built around a real processor: every field named here is shrunk to this
# value wherever it appears in the config or a sub-config; everything else (vocabulary, token
# ids, patch and image sizes, merge sizes) stays as the checkpoint has it.
TINY_SIZES = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "projection_dim": 32, "embed_dim": 32, "depth": 2, "num_heads": 2,
    "out_hidden_size": 64, "mm_hidden_size": 64, "vision_output_dim": 64,
}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "head_dim": 16}
# vLLM's CPU attention kernel takes head sizes 32, 64, 80, ... only: the same tiny model, heads of 32.
VLLM_SIZES = {**TINY_SIZES, "hidden_size": 128, "intermediate_size": 256, "head_dim": 32, "embed_dim": 64,
              "out_hidden_size": 128, "mm_hidden_size": 128, "vision_output_dim": 128}
VLLM_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "head_dim": 32}
# Files of a processor folder that describe the model, not the processor: never copied.
MODEL_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}


def _shrink(cfg, sizes: dict) -> None:
    for key, value in sizes.items():
        if hasattr(cfg, key) and isinstance(getattr(cfg, key), int):
            setattr(cfg, key, value)
    if isinstance(getattr(cfg, "layer_types", None), list) and hasattr(cfg, "num_hidden_layers"):
        cfg.layer_types = cfg.layer_types[: cfg.num_hidden_layers]
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    if isinstance(rope, dict) and "mrope_section" in rope:  # M-RoPE: sections split head_dim / 2
        head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        old = rope["mrope_section"]
        new = [max(1, round(x * (head // 2) / sum(old))) for x in old]
        new[0] += head // 2 - sum(new)
        rope["mrope_section"] = new


def tiny_config_from(folder: str | Path, *, vllm: bool = False):
    """The checkpoint's config with its sizes shrunk (see TINY_SIZES; ``vllm``: VLLM_SIZES)."""
    from transformers import AutoConfig

    sizes, vision_sizes = (VLLM_SIZES, VLLM_VISION) if vllm else (TINY_SIZES, TINY_VISION)
    config = AutoConfig.from_pretrained(str(folder))
    text = getattr(config, "text_config", None)
    vision = getattr(config, "vision_config", None)
    _shrink(config, sizes)
    if text is not None:
        _shrink(text, sizes)
        text.max_window_layers = getattr(text, "max_window_layers", None) and text.num_hidden_layers
    if vision is not None:
        _shrink(vision, {**sizes, **vision_sizes})
        # Where the vision tower's merger feeds the text model directly, its output is text-sized:
        # Qwen2-VL names its inner width embed_dim and its output hidden_size; Qwen2.5-VL says out_hidden_size.
        if hasattr(vision, "embed_dim"):
            vision.hidden_size = sizes["hidden_size"]
        if hasattr(vision, "out_hidden_size"):
            vision.out_hidden_size = sizes["hidden_size"]
    layers = getattr(config, "vision_feature_layer", None)
    if isinstance(layers, int) and vision is not None and hasattr(vision, "num_hidden_layers"):
        config.vision_feature_layer = max(layers, -vision.num_hidden_layers)
    return config


def build_from_processor(folder: str | Path, outdir: str | Path, *, seed: int = 0, vllm: bool = False) -> Path:
    """A tiny random model around the real processor files in ``folder``, saved to ``outdir``.

    ``vllm``: heads of 32 (vLLM's CPU kernel) and LLaVA's vision tower saved under the key names
    of the checkpoints on the Hub (``vision_tower.vision_model.*``), which vLLM 0.32 expects and
    transformers reads as well; transformers 5.19+ would write ``vision_tower.embeddings.*``."""
    import shutil

    import torch
    from transformers import AutoModelForImageTextToText

    folder, outdir = Path(folder), Path(outdir)
    config = tiny_config_from(folder, vllm=vllm)
    config.dtype = "float32"
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    outdir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(outdir)
    if vllm:
        hub_vision_keys(outdir)
    for f in folder.iterdir():  # the processor as the checkpoint ships it, byte for byte
        if f.is_file() and f.name not in MODEL_FILES:
            shutil.copyfile(f, outdir / f.name)
    return outdir


def hub_vision_keys(folder: Path) -> None:
    """``...vision_tower.embeddings.*`` -> ``...vision_tower.vision_model.embeddings.*`` (CLIP towers),
    in every safetensors shard of ``folder`` and its index."""
    import json

    from safetensors.torch import load_file, save_file

    def rename(key: str) -> str:
        head, sep, tail = key.partition("vision_tower.")
        return f"{head}vision_tower.vision_model.{tail}" if sep and not tail.startswith("vision_model.") else key

    for shard in sorted(Path(folder).glob("*.safetensors")):
        save_file({rename(k): v for k, v in load_file(shard).items()}, shard, metadata={"format": "pt"})
    index = Path(folder) / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))


def build(outdir: str | Path, *, seed: int = 0, shape: str = "tiny", device: str = "cpu") -> Path:
    outdir = Path(outdir)
    model, processor = build_in_memory(shape, seed=seed, device=device)
    outdir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(outdir)
    processor.save_pretrained(outdir)
    return outdir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", choices=["tiny", "llava-7b"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--from-processor", metavar="FOLDER", help="a real checkpoint's processor files to build around")
    ap.add_argument("--vllm", action="store_true", help="with --from-processor: a model vLLM's CPU build runs")
    args = ap.parse_args(argv)
    if args.from_processor:
        out = build_from_processor(args.from_processor, args.outdir, seed=args.seed, vllm=args.vllm)
    else:
        out = build(args.outdir, seed=args.seed, shape=args.shape, device=args.device)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    kind = f"model around {args.from_processor}" if args.from_processor else f"{args.shape} LLaVA"
    print(f"wrote a random {kind} to {out} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
