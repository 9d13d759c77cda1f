"""Build a tiny random LLaVA, offline and deterministic, for tests, the demo and CPU benchmarks.

It has the same parts as a real checkpoint (CLIP vision tower, projector, Llama text model, a
BPE tokenizer trained here with `tokenizers`, a processor and a LLaVA-1.5 chat template), is
saved with save_pretrained, and loads through the same code users run on real models.

    python tools/make_tiny_model.py OUTDIR [--seed 0]
    python tools/make_tiny_model.py OUTDIR --shape llava-7b   # random bf16 LLaVA-1.5-7B shape (GPU bench)
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
    args = ap.parse_args(argv)
    out = build(args.outdir, seed=args.seed, shape=args.shape, device=args.device)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {args.shape} random LLaVA to {out} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
