"""The original LLaVA code's layout, read: config.json, the weights, the CLIP tower, the projector's
weights and the tokenizer of a LLaVA-1.5, LLaVA-Med or STLLaVA-Med checkpoint.

As haotian-liu/LLaVA writes it (llava/model/llava_arch.py, builder.py) and microsoft/LLaVA-Med and
heliossun/STLLaVA-Med inherit: ``model_type`` llava_llama or llava_mistral; the language model's
keys at ``model.*`` and ``lm_head``; the projector at ``model.mm_projector.*`` (``mlp2x_gelu``:
Linear, GELU, Linear as ``.0`` and ``.2``; SQ-LLaVA's ``cluster``, see cluster.py); the CLIP tower,
when saved, at ``model.vision_tower.vision_tower.*`` and otherwise only named by ``mm_vision_tower``;
image settings ``mm_vision_select_layer``, ``mm_vision_select_feature`` and ``image_aspect_ratio``.
"""

from __future__ import annotations

import json
from pathlib import Path

from stmed.convert import cluster
from stmed.errors import InputError

TEXT_TYPE = {"llava_llama": "llama", "llava": "llama", "llava_mistral": "mistral"}
# CLIP ViT-L/14-336 (openai/clip-vit-large-patch14-336), LLaVA-1.5's and STLLaVA-Med's tower: used
# when the checkpoint carries the tower's weights but no folder with its config is at hand
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
PROJECTOR, TOWER = "model.mm_projector.", "model.vision_tower.vision_tower."


def fail(src: Path, what: str):
    """One InputError line about the checkpoint ``src``."""
    raise InputError(f"convert {src}: {what}")


def read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        fail(src, "no config.json in that folder")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("model_type") not in TEXT_TYPE:
        fail(src, f"model_type {cfg.get('model_type')!r} is not an original-layout LLaVA "
                  f"({', '.join(sorted(TEXT_TYPE))}); an llava-hf checkpoint needs no conversion")
    if str(cfg.get("image_aspect_ratio", "pad")).startswith("anyres"):
        fail(src, "image_aspect_ratio anyres (LLaVA-NeXT tiles) is not one stmed converts; use llava-hf's "
                  "LLaVA-NeXT checkpoints")
    if cfg.get("mm_use_im_start_end"):
        fail(src, "mm_use_im_start_end (<im_start>/<im_end> around the image) is not one stmed converts")
    return cfg


def text_config(cfg: dict):
    """The language model's transformers config: config.json less its multimodal and training keys."""
    from transformers import AutoConfig

    fields = {k: v for k, v in cfg.items() if not k.startswith(("mm_", "tune_", "freeze_", "use_mm"))
              and k not in ("architectures", "model_type", "transformers_version", "image_aspect_ratio",
                            "image_grid_pinpoints", "tokenizer_padding_side", "tokenizer_model_max_length")}
    return AutoConfig.for_model(TEXT_TYPE[cfg["model_type"]], **fields)


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


def projector_file(src: Path, path: str) -> dict:
    """``model.mm_projector.*`` from a separate file, whatever prefix it was saved under."""
    import torch

    if not Path(path).is_file():
        fail(src, f"--projector {path}: no such file")
    found = {}
    for k, v in torch.load(path, map_location="cpu", weights_only=True).items():
        at = k.find("mm_projector.")
        if at >= 0:
            found[PROJECTOR + k[at + len("mm_projector."):]] = v
    if not found:
        fail(src, f"--projector {path}: no mm_projector weights in that file")
    return found


def projector(src: Path, cfg: dict, state: dict, vision_dim: int, text_dim: int) -> tuple[str, dict]:
    """The projector's kind and its weights under the target module's names."""
    kind = cfg.get("mm_projector_type", "linear")
    proj = {k[len(PROJECTOR):]: v for k, v in state.items() if k.startswith(PROJECTOR)}
    if not proj:
        fail(src, "no projector weights (model.mm_projector.*) in the checkpoint"
                  + ("" if (src / "mm_projector.bin").is_file() else "; a pretraining run's mm_projector.bin is not enough either"))
    first = proj.get("0.weight", proj.get("mlp.0.weight"))
    if first is None:
        fail(src, f"projector type {kind!r} is not one stmed converts (mlp2x_gelu, cluster)")
    if tuple(first.shape) != (text_dim, vision_dim):
        fail(src, f"the projector maps {first.shape[1]} to {first.shape[0]} features, but the vision tower gives "
                  f"{vision_dim} and the language model takes {text_dim} (wrong hidden size or --vision-tower)")
    if kind == cluster.KIND:
        return kind, cluster.weights(proj)
    if kind != "mlp2x_gelu":
        fail(src, f"projector type {kind!r} is not one stmed converts (mlp2x_gelu, cluster)")
    return kind, {k.replace("0.", "linear_1.", 1) if k.startswith("0.") else k.replace("2.", "linear_2.", 1): v
                  for k, v in proj.items()}


def vision(src: Path, cfg: dict, state: dict, vision_tower: str | None):
    """(CLIP vision config, its weights from the checkpoint (CLIPVisionModel keys, maybe none),
    the CLIP folder or None). A folder's own weights are read later, once the shapes are checked."""
    from transformers import CLIPVisionConfig

    own = {k[len(TOWER):]: v for k, v in state.items() if k.startswith(TOWER)}
    name = vision_tower or cfg.get("mm_vision_tower")
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
        fail(src, f"the checkpoint carries no vision tower weights and {where}; pass --vision-tower FOLDER (a CLIP model)")
    if name and "clip-vit-large-patch14-336" not in name:
        fail(src, f"the vision tower {name!r} has no config here; pass --vision-tower FOLDER (its CLIP folder)")
    return CLIPVisionConfig(**CLIP_L_336), own, None


def vision_weights(own: dict, folder: Path | None) -> dict:
    """The checkpoint's tower (STLLaVA-Med's is LoRA-tuned) wins over the CLIP folder's."""
    if own:
        return own
    from transformers import CLIPVisionModel

    from stmed.errors import loading_model

    with loading_model(str(folder)):
        return CLIPVisionModel.from_pretrained(folder).state_dict()


def tokenizer(src: Path, model_base: str | None):
    """The checkpoint's tokenizer (else --model-base's) with ``<image>`` and a pad token."""
    from transformers import AutoTokenizer

    for where in (src, Path(model_base).expanduser() if model_base else None):
        if where is not None and ((where / "tokenizer_config.json").is_file() or (where / "tokenizer.json").is_file()):
            tok = AutoTokenizer.from_pretrained(where)
            break
    else:
        fail(src, "no tokenizer (tokenizer_config.json) in the checkpoint or --model-base")
    if "<image>" not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok
