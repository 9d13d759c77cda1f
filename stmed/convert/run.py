"""``stmed convert``'s library side: its options, and ``convert``, which reads an original-layout
checkpoint (llava.py; a LoRA run through lora.py), builds transformers' LlavaForConditionalGeneration
(or cluster.py's class for SQ-LLaVA's projector) and writes the llava-hf folder.

The target layout is transformers' LlavaForConditionalGeneration (models/llava/modeling_llava.py,
and convert_llava_weights_to_hf.py for the renames): ``model.language_model.*``, ``model.vision_tower.*``,
``model.multi_modal_projector.linear_1/2``, ``lm_head``. The weights are loaded into that module
and saved with ``save_pretrained``, so the key names are whatever the installed transformers writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stmed.convert import cluster, llava, lora
from stmed.convert.llava import PROJECTOR, fail
from stmed.convert.templates import DEFAULT_TEMPLATE, TEMPLATES
from stmed.errors import InputError
from stmed.options import opt


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert; each field is also a flag of ``stmed convert``."""

    model_base: str | None = opt(None, "The base model folder a LoRA checkpoint (non_lora_trainables.bin) was trained on.")
    vision_tower: str | None = opt(None, "A CLIP folder: the vision tower's config (and weights, where the checkpoint "
                                         "has none) in place of config.json's mm_vision_tower.")
    projector: str | None = opt(None, "A projector file (mm_projector.bin, non_lora_trainables.bin) for a checkpoint "
                                      "shipped in parts (STLLaVA-Med's -llm, -vit, -projector).")
    vision_lora: str | None = opt(None, "A peft adapter folder on the vision tower (STLLaVA-Med's ViT LoRA, which its "
                                        "builder.py loads as lora_pt), merged into the tower.")
    chat_template: str | None = opt(None, "vicuna_v1 | mistral_instruct: the original conversation template to write "
                                          "(default: vicuna_v1 for llava_llama, mistral_instruct for llava_mistral).")
    dtype: str = opt("auto", "auto | bfloat16 | float16 | float32 (auto: the checkpoint's torch_dtype).")


def convert(src: str | Path, dst: str | Path, opts: ConvertOptions = ConvertOptions()) -> dict:
    """Write the llava-hf folder ``dst`` from the original-layout checkpoint ``src``; returns what
    was done (also saved as ``dst/stmed_convert.json``). A file of the checkpoint that does not
    read whole (a download cut short, a torn config.json) is one InputError line."""
    from stmed.errors import StmedError, damaged_file

    try:
        return _convert(src, dst, opts)
    except StmedError:
        raise
    except Exception as e:
        if not (damaged_file(e) or isinstance(e, (json.JSONDecodeError, UnicodeDecodeError))):
            raise
        raise InputError(f"convert {src}: a file of the checkpoint is damaged or cut short "
                         f"({type(e).__name__}: {str(e).strip()[:160]})") from None


def _convert(src: str | Path, dst: str | Path, opts: ConvertOptions) -> dict:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from stmed.core.model import quiet_hf

    quiet_hf()
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise InputError(f"convert {src}: no such folder")
    cfg = llava.read_config(src)
    template = opts.chat_template or DEFAULT_TEMPLATE[cfg["model_type"]]
    if template not in TEMPLATES:
        raise InputError(f"--chat-template {template!r}: expected one of {', '.join(TEMPLATES)}")
    merged = lora.is_lora_run(src)
    state = lora.merged_run(src, opts.model_base, opts.vision_tower) if merged else llava.load_state(src)
    if opts.projector:
        state.update(llava.projector_file(src, opts.projector))
    if not state:
        fail(src, "no weights (*.safetensors or pytorch_model*.bin) in that folder")
    for key in ("model.embed_tokens.weight", "model.norm.weight"):
        if key not in state:
            fail(src, f"the language model's {key} is missing (a truncated checkpoint?)")
    text = llava.text_config(cfg)
    if state["model.embed_tokens.weight"].shape[1] != text.hidden_size:
        fail(src, f"the embeddings are {state['model.embed_tokens.weight'].shape[1]} wide but config.json says "
                  f"hidden_size {text.hidden_size}")
    vision, vision_state, vision_folder = llava.vision(src, cfg, state, opts.vision_tower)
    kind, proj = llava.projector(src, cfg, state, vision.hidden_size, text.hidden_size)
    vision_state = llava.vision_weights(vision_state, vision_folder)
    if opts.vision_lora:
        vision_state = lora.merged_vision(src, dict(vision_state), opts.vision_lora)
    tok = llava.tokenizer(src, opts.model_base)
    image_token_id = tok.convert_tokens_to_ids("<image>")
    strategy = "default" if cfg.get("mm_vision_select_feature", "patch") == "patch" else "full"
    common = dict(vision_config=vision, text_config=text, image_token_id=image_token_id,
                  vision_feature_layer=cfg.get("mm_vision_select_layer", -2), vision_feature_select_strategy=strategy,
                  image_seq_length=(vision.image_size // vision.patch_size) ** 2, projector_hidden_act="gelu",
                  multimodal_projector_bias=True)
    dtype = _dtype(opts.dtype, cfg, state)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from contextlib import nullcontext as no_init_weights
    try:
        if kind == cluster.KIND:
            config, model_cls = cluster.config_and_class(common)
        else:
            config, model_cls = LlavaConfig(**common), LlavaForConditionalGeneration
        with no_init_weights():  # a 7B model is not initialised at random only to be overwritten
            model = model_cls(config)
    finally:
        torch.set_default_dtype(previous)
    lm = {k[len("model."):]: v for k, v in state.items()
          if k.startswith("model.") and not k.startswith((PROJECTOR, "model.vision_tower."))}
    _load(src, model.model.language_model, lm, "language model")
    _load(src, model.model.multi_modal_projector, proj, "projector")
    _load(src, model.model.vision_tower, vision_state, "vision tower")
    if "lm_head.weight" not in state:
        fail(src, "lm_head.weight is missing (a truncated checkpoint?)")
    model.lm_head.weight.data.copy_(state["lm_head.weight"])
    _grow_vocab(model, len(tok))
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    processor = LlavaProcessor(image_processor=_image_processor(cfg, vision, vision_folder), tokenizer=tok,
                               patch_size=vision.patch_size, vision_feature_select_strategy=strategy,
                               chat_template=TEMPLATES[template], num_additional_image_tokens=1)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    if kind != cluster.KIND:
        _hub_vision_keys(dst)
    processor.save_pretrained(dst)
    done = {"source": str(src), "source_model_type": cfg["model_type"], "projector": kind, "template": template,
            "lora_merged_onto": opts.model_base if merged else None,
            "vision_tower": str(vision_folder) if vision_folder else "from the checkpoint",
            "image_token_id": image_token_id, "pad_to_square": cfg.get("image_aspect_ratio") == "pad",
            "vision_feature_layer": common["vision_feature_layer"], "dtype": str(dtype).replace("torch.", "")}
    (dst / "stmed_convert.json").write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
    return done


def _image_processor(cfg: dict, vision, folder):
    try:
        from transformers import LlavaImageProcessorPil as Proc
    except ImportError:  # older transformers: the one class
        from transformers import LlavaImageProcessor as Proc

    size = vision.image_size
    kwargs = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    if isinstance(folder, Path) and (folder / "preprocessor_config.json").is_file():
        saved = json.loads((folder / "preprocessor_config.json").read_text())
        kwargs.update({k: saved[k] for k in ("size", "crop_size", "image_mean", "image_std") if k in saved})
    # image_aspect_ratio "pad": expand2square with the mean colour before the CLIP resize (llava/mm_utils.py)
    return Proc(**kwargs, do_pad=cfg.get("image_aspect_ratio") == "pad")


def _hub_vision_keys(folder: Path) -> None:
    """The CLIP tower under the key names of llava-hf's checkpoints on the Hub
    (``vision_tower.vision_model.*``): vLLM 0.32 reads only those, and transformers maps them back
    for model_type llava (recent releases save ``vision_tower.embeddings.*``)."""
    from safetensors.torch import load_file, save_file

    def rename(key: str) -> str:
        head, sep, tail = key.partition("vision_tower.")
        return f"{head}vision_tower.vision_model.{tail}" if sep and not tail.startswith("vision_model.") else key

    for shard in sorted(folder.glob("*.safetensors")):
        save_file({rename(k): v for k, v in load_file(shard).items()}, shard, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _dtype(name: str, cfg: dict, state: dict):
    import torch

    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name != "auto":
        if name not in table:
            raise InputError(f"--dtype {name!r}: expected one of auto, {', '.join(table)}")
        return table[name]
    saved = cfg.get("torch_dtype") or cfg.get("dtype")
    return table.get(saved, next(iter(state.values())).dtype if state else torch.float32)


def _load(src: Path, module, weights: dict, part: str) -> None:
    """``weights`` into ``module`` exactly (CLIP keys with or without their ``vision_model.`` prefix)."""
    own = module.state_dict()
    if not set(weights) & set(own):
        flip = {k.removeprefix("vision_model."): v for k, v in weights.items()}
        weights = flip if set(flip) & set(own) else {f"vision_model.{k}": v for k, v in weights.items()}
    missing = sorted(k for k in own if k not in weights and not k.endswith(("position_ids", "inv_freq")))
    if missing:
        fail(src, f"the {part} lacks {len(missing)} weights (first: {missing[0]})")
    for k, v in weights.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            fail(src, f"the {part}'s {k} is {tuple(v.shape)}, expected {tuple(own[k].shape)} from config.json")
    module.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)


def _grow_vocab(model, size: int) -> None:
    """Rows for tokens added here (``<image>``): the mean of the old rows, so nothing else moves
    (transformers' convert_llava_weights_to_hf.py samples around that mean instead)."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if size <= old:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            w[old:] = w[:old].mean(dim=0, keepdim=True)
