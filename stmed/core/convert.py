"""Convert a checkpoint in the original LLaVA code's layout into the llava-hf layout every stmed
command loads (``AutoModelForImageTextToText`` + ``AutoProcessor``).

The original layout, as haotian-liu/LLaVA writes it (llava/model/llava_arch.py, builder.py) and
microsoft/LLaVA-Med and heliossun/STLLaVA-Med inherit: ``model_type`` llava_llama or llava_mistral;
the language model's keys at ``model.*`` and ``lm_head``; the projector at ``model.mm_projector.*``
(``mlp2x_gelu``: Linear, GELU, Linear as ``.0`` and ``.2``; SQ-LLaVA's ``cluster``); the CLIP tower,
when saved, at ``model.vision_tower.vision_tower.*`` and otherwise only named by ``mm_vision_tower``;
image settings ``mm_vision_select_layer``, ``mm_vision_select_feature`` and ``image_aspect_ratio``.
A LoRA run (``--lora_enable``) saves adapter_model.* plus ``non_lora_trainables.bin`` (the projector)
and is merged onto ``--model-base`` as builder.py's load_pretrained_model does.

The target layout is transformers' LlavaForConditionalGeneration (models/llava/modeling_llava.py,
and convert_llava_weights_to_hf.py for the renames): ``model.language_model.*``, ``model.vision_tower.*``,
``model.multi_modal_projector.linear_1/2``, ``lm_head``. The weights are loaded into that module
and saved with ``save_pretrained``, so the key names are whatever the installed transformers writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stmed.errors import InputError
from stmed.core.llava_templates import DEFAULT_TEMPLATE, TEMPLATES
from stmed.options import opt

TEXT_TYPE = {"llava_llama": "llama", "llava": "llama", "llava_mistral": "mistral"}
# CLIP ViT-L/14-336 (openai/clip-vit-large-patch14-336), LLaVA-1.5's and STLLaVA-Med's tower: used
# when the checkpoint carries the tower's weights but no folder with its config is at hand
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
PROJECTOR, TOWER = "model.mm_projector.", "model.vision_tower.vision_tower."


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
    template: str | None = opt(None, "vicuna_v1 | mistral_instruct: the original conversation template to write "
                                     "(default: vicuna_v1 for llava_llama, mistral_instruct for llava_mistral).")
    dtype: str = opt("auto", "auto | bfloat16 | float16 | float32 (auto: the checkpoint's torch_dtype).")


def _fail(src: Path, what: str):
    raise InputError(f"convert {src}: {what}")


def read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        _fail(src, "no config.json in that folder")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("model_type") not in TEXT_TYPE:
        _fail(src, f"model_type {cfg.get('model_type')!r} is not an original-layout LLaVA "
                   f"({', '.join(sorted(TEXT_TYPE))}); an llava-hf checkpoint needs no conversion")
    if str(cfg.get("image_aspect_ratio", "pad")).startswith("anyres"):
        _fail(src, "image_aspect_ratio anyres (LLaVA-NeXT tiles) is not one stmed converts; use llava-hf's "
                   "LLaVA-NeXT checkpoints")
    if cfg.get("mm_use_im_start_end"):
        _fail(src, "mm_use_im_start_end (<im_start>/<im_end> around the image) is not one stmed converts")
    return cfg


def load_state(folder: Path) -> dict:
    """Every tensor of a checkpoint folder: safetensors or .bin shards, index or not."""
    import torch

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    state = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(f))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def _projector_file(src: Path, path: str) -> dict:
    """``model.mm_projector.*`` from a separate file, whatever prefix it was saved under."""
    import torch

    if not Path(path).is_file():
        _fail(src, f"--projector {path}: no such file")
    found = {}
    for k, v in torch.load(path, map_location="cpu", weights_only=True).items():
        at = k.find("mm_projector.")
        if at >= 0:
            found[PROJECTOR + k[at + len("mm_projector."):]] = v
    if not found:
        _fail(src, f"--projector {path}: no mm_projector weights in that file")
    return found


def _lora_state(src: Path, opts: ConvertOptions) -> dict:
    """A LoRA run merged onto its base, as builder.py does: base weights, then the non-LoRA
    trainables (projector), then each LoRA pair folded in (W += B @ A * alpha / r)."""
    import torch

    base = opts.model_base
    if base is None:
        _fail(src, "a LoRA checkpoint (non_lora_trainables.bin); pass --model-base with the base model it was trained on")
    base_dir = Path(base).expanduser()
    if not base_dir.is_dir():
        _fail(src, f"--model-base {base}: no such folder")
    state = load_state(base_dir)
    if not state:
        _fail(src, f"--model-base {base}: no weights (*.safetensors or pytorch_model*.bin) in that folder")
    strip = lambda k: k.removeprefix("base_model.model.")  # noqa: E731  (peft's wrapper prefix)
    extra = {strip(k): v for k, v in torch.load(src / "non_lora_trainables.bin", map_location="cpu",
                                                 weights_only=True).items()}
    if any(k.startswith(PROJECTOR) for k in extra):  # a new projector (STLLaVA-Med's cluster on LLaVA-1.5's base)
        state = {k: v for k, v in state.items() if not k.startswith(PROJECTOR)}
    state.update(extra)
    adapter, scale = _read_adapter(src)
    if any(TOWER in strip(k) for k in adapter) and not any(k.startswith(TOWER) for k in state):
        # LoRA on the CLIP tower too (STLLaVA-Med): the base tower is the --vision-tower folder's
        if not opts.vision_tower:
            _fail(src, "the adapter tunes the vision tower; pass --vision-tower FOLDER with the CLIP it was trained on")
        from transformers import CLIPVisionModel

        from stmed.errors import loading_model

        with loading_model(opts.vision_tower):
            clip = CLIPVisionModel.from_pretrained(opts.vision_tower).state_dict()
        state.update({TOWER + ("" if k.startswith("vision_model.") else "vision_model.") + k: v for k, v in clip.items()})
    _merge_lora(src, state, adapter, scale, lambda k: strip(k), f"--model-base {base}")
    return state


def _read_adapter(folder: Path) -> tuple[dict, float]:
    """A peft adapter folder's LoRA tensors and their scale (lora_alpha / r), or ({}, 0)."""
    import torch

    adapter = {}
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        adapter = load_file(folder / "adapter_model.safetensors")
    elif (folder / "adapter_model.bin").is_file():
        adapter = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    adapter = {k: v for k, v in adapter.items() if "lora_" in k}
    if not adapter:
        return {}, 0.0
    if not (folder / "adapter_config.json").is_file():
        _fail(folder, "LoRA weights without adapter_config.json (its r and lora_alpha scale them)")
    acfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    return adapter, acfg["lora_alpha"] / acfg["r"]  # rank_pattern / alpha_pattern: LLaVA's scripts set none


def _merge_lora(src: Path, state: dict, adapter: dict, scale: float, target_of, where: str) -> None:
    """Fold each LoRA pair into its weight in ``state``: W += scale * B @ A (peft's merge_and_unload)."""
    for key in [k for k in adapter if ".lora_A." in k]:
        target = target_of(key.replace(".lora_A.default", "").replace(".lora_A", ""))
        if target not in state:
            _fail(src, f"the adapter's {key} has no base weight {target} in {where}")
        a, b = adapter[key].float(), adapter[key.replace("lora_A", "lora_B")].float()
        state[target] = (state[target].float() + scale * (b @ a)).to(state[target].dtype)


def _vision(src: Path, cfg: dict, state: dict, opts: ConvertOptions):
    """(CLIP vision config, its weights from the checkpoint (CLIPVisionModel keys, maybe none),
    the CLIP folder or None). A folder's own weights are read later, once the shapes are checked."""
    from transformers import CLIPVisionConfig

    own = {k[len(TOWER):]: v for k, v in state.items() if k.startswith(TOWER)}
    name = opts.vision_tower or cfg.get("mm_vision_tower")
    folder = Path(name).expanduser() if name else None
    if folder is not None and folder.is_dir():
        from transformers import AutoConfig

        vc = AutoConfig.from_pretrained(folder)
        return CLIPVisionConfig(**getattr(vc, "vision_config", vc).to_dict()), own, folder
    if name and not own:  # a Hub id: its config and weights from the local cache (or the Hub, when online)
        try:
            from transformers import AutoConfig

            vc = AutoConfig.from_pretrained(name)
            return CLIPVisionConfig(**getattr(vc, "vision_config", vc).to_dict()), own, name
        except (OSError, ValueError):
            pass
    if not own:
        where = f"mm_vision_tower {name!r} is not a local folder" if name else "its config names no mm_vision_tower"
        _fail(src, f"the checkpoint carries no vision tower weights and {where}; pass --vision-tower FOLDER (a CLIP model)")
    if name and "clip-vit-large-patch14-336" not in name:
        _fail(src, f"the vision tower {name!r} has no config here; pass --vision-tower FOLDER (its CLIP folder)")
    return CLIPVisionConfig(**CLIP_L_336), own, None


def _vision_weights(src: Path, own: dict, folder: Path | None) -> dict:
    """The checkpoint's tower (STLLaVA-Med's is LoRA-tuned) wins over the CLIP folder's."""
    if own:
        return own
    from transformers import CLIPVisionModel

    from stmed.errors import loading_model

    with loading_model(str(folder)):
        return CLIPVisionModel.from_pretrained(folder).state_dict()


def _vision_lora(src: Path, tower: dict, folder: str) -> dict:
    """A peft adapter made on LLaVA's CLIPVisionTower wrapper (keys base_model.model.vision_tower.
    vision_model.*), merged into the tower's CLIPVisionModel weights."""
    if not Path(folder).is_dir():
        _fail(src, f"--vision-lora {folder}: no such folder")
    adapter, scale = _read_adapter(Path(folder))
    if not adapter:
        _fail(src, f"--vision-lora {folder}: no LoRA weights (adapter_model.*) in that folder")
    prefixed = any(k.startswith("vision_model.") for k in tower)

    def target(key: str) -> str:
        key = key.removeprefix("base_model.model.").removeprefix("vision_tower.")
        return key if prefixed else key.removeprefix("vision_model.")

    _merge_lora(src, tower, adapter, scale, target, "the vision tower")
    return tower


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


def _tokenizer(src: Path, opts: ConvertOptions):
    from transformers import AutoTokenizer

    for where in (src, Path(opts.model_base).expanduser() if opts.model_base else None):
        if where is not None and ((where / "tokenizer_config.json").is_file() or (where / "tokenizer.json").is_file()):
            tok = AutoTokenizer.from_pretrained(where)
            break
    else:
        _fail(src, "no tokenizer (tokenizer_config.json) in the checkpoint or --model-base")
    if "<image>" not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def _projector(src: Path, cfg: dict, state: dict, vision_dim: int, text_dim: int) -> tuple[str, dict]:
    """The projector's kind and its weights under the target module's names."""
    kind = cfg.get("mm_projector_type", "linear")
    proj = {k[len(PROJECTOR):]: v for k, v in state.items() if k.startswith(PROJECTOR)}
    if not proj:
        _fail(src, "no projector weights (model.mm_projector.*) in the checkpoint"
                   + ("" if (src / "mm_projector.bin").is_file() else "; a pretraining run's mm_projector.bin is not enough either"))
    first = proj.get("0.weight", proj.get("mlp.0.weight"))
    if first is None:
        _fail(src, f"projector type {kind!r} is not one stmed converts (mlp2x_gelu, cluster)")
    if tuple(first.shape) != (text_dim, vision_dim):
        _fail(src, f"the projector maps {first.shape[1]} to {first.shape[0]} features, but the vision tower gives "
                   f"{vision_dim} and the language model takes {text_dim} (wrong hidden size or --vision-tower)")
    if kind == "cluster":
        renamed = {k.replace("mlp.0.", "linear_1.").replace("mlp.2.", "linear_2."): v for k, v in proj.items()}
        return kind, renamed
    if kind != "mlp2x_gelu":
        _fail(src, f"projector type {kind!r} is not one stmed converts (mlp2x_gelu, cluster)")
    return kind, {k.replace("0.", "linear_1.", 1) if k.startswith("0.") else k.replace("2.", "linear_2.", 1): v
                  for k, v in proj.items()}


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
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from stmed.core.cluster import NUM_CENTERS, register
    from stmed.core.model import _quiet_hf

    _quiet_hf()
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise InputError(f"convert {src}: no such folder")
    cfg = read_config(src)
    template = opts.template or DEFAULT_TEMPLATE[cfg["model_type"]]
    if template not in TEMPLATES:
        raise InputError(f"--template {template!r}: expected one of {', '.join(TEMPLATES)}")
    lora = (src / "non_lora_trainables.bin").is_file()
    state = _lora_state(src, opts) if lora else load_state(src)
    if opts.projector:
        state.update(_projector_file(src, opts.projector))
    if not state:
        _fail(src, "no weights (*.safetensors or pytorch_model*.bin) in that folder")
    for key in ("model.embed_tokens.weight", "model.norm.weight"):
        if key not in state:
            _fail(src, f"the language model's {key} is missing (a truncated checkpoint?)")
    text_fields = {k: v for k, v in cfg.items() if not k.startswith(("mm_", "tune_", "freeze_", "use_mm"))
                   and k not in ("architectures", "model_type", "transformers_version", "image_aspect_ratio",
                                 "image_grid_pinpoints", "tokenizer_padding_side", "tokenizer_model_max_length")}
    text = AutoConfig.for_model(TEXT_TYPE[cfg["model_type"]], **text_fields)
    if state["model.embed_tokens.weight"].shape[1] != text.hidden_size:
        _fail(src, f"the embeddings are {state['model.embed_tokens.weight'].shape[1]} wide but config.json says "
                   f"hidden_size {text.hidden_size}")
    vision, vision_state, vision_folder = _vision(src, cfg, state, opts)
    kind, proj = _projector(src, cfg, state, vision.hidden_size, text.hidden_size)
    vision_state = _vision_weights(src, vision_state, vision_folder)
    if opts.vision_lora:
        vision_state = _vision_lora(src, dict(vision_state), opts.vision_lora)
    tok = _tokenizer(src, opts)
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
        if kind == "cluster":
            config_cls, model_cls = register()
            config = config_cls(**common, cluster_centers=NUM_CENTERS)
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
        _fail(src, "lm_head.weight is missing (a truncated checkpoint?)")
    model.lm_head.weight.data.copy_(state["lm_head.weight"])
    _grow_vocab(model, len(tok))
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    processor = LlavaProcessor(image_processor=_image_processor(cfg, vision, vision_folder), tokenizer=tok,
                               patch_size=vision.patch_size, vision_feature_select_strategy=strategy,
                               chat_template=TEMPLATES[template], num_additional_image_tokens=1)
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    if kind != "cluster":
        _hub_vision_keys(dst)
    processor.save_pretrained(dst)
    done = {"source": str(src), "source_model_type": cfg["model_type"], "projector": kind, "template": template,
            "lora_merged_onto": opts.model_base if lora else None,
            "vision_tower": str(vision_folder) if vision_folder else "from the checkpoint",
            "image_token_id": image_token_id, "pad_to_square": cfg.get("image_aspect_ratio") == "pad",
            "vision_feature_layer": common["vision_feature_layer"], "dtype": str(dtype).replace("torch.", "")}
    (dst / "stmed_convert.json").write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
    return done


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
        _fail(src, f"the {part} lacks {len(missing)} weights (first: {missing[0]})")
    for k, v in weights.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            _fail(src, f"the {part}'s {k} is {tuple(v.shape)}, expected {tuple(own[k].shape)} from config.json")
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
