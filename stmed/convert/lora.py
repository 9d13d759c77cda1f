"""LoRA folded into the weights, as the original loaders do: a ``--lora_enable`` run (adapter_model.*
plus ``non_lora_trainables.bin``, the projector) merged onto its ``--model-base`` as builder.py's
load_pretrained_model does, and STLLaVA-Med's ViT LoRA (``--vision-lora``) merged into the tower.
"""

from __future__ import annotations

import json
from pathlib import Path

from stmed.convert.llava import PROJECTOR, TOWER, fail, load_state

NON_LORA = "non_lora_trainables.bin"


def is_lora_run(src: Path) -> bool:
    return (src / NON_LORA).is_file()


def merged_run(src: Path, model_base: str | None, vision_tower: str | None) -> dict:
    """A LoRA run merged onto its base, as builder.py does: base weights, then the non-LoRA
    trainables (projector), then each LoRA pair folded in (W += B @ A * alpha / r)."""
    import torch

    base = model_base
    if base is None:
        fail(src, "a LoRA checkpoint (non_lora_trainables.bin); pass --model-base with the base model it was trained on")
    base_dir = Path(base).expanduser()
    if not base_dir.is_dir():
        fail(src, f"--model-base {base}: no such folder")
    state = load_state(base_dir)
    if not state:
        fail(src, f"--model-base {base}: no weights (*.safetensors or pytorch_model*.bin) in that folder")
    strip = lambda k: k.removeprefix("base_model.model.")  # noqa: E731  (peft's wrapper prefix)
    extra = {strip(k): v for k, v in torch.load(src / NON_LORA, map_location="cpu", weights_only=True).items()}
    if any(k.startswith(PROJECTOR) for k in extra):  # a new projector (STLLaVA-Med's cluster on LLaVA-1.5's base)
        state = {k: v for k, v in state.items() if not k.startswith(PROJECTOR)}
    state.update(extra)
    adapter, scale = read_adapter(src)
    if any(TOWER in strip(k) for k in adapter) and not any(k.startswith(TOWER) for k in state):
        # LoRA on the CLIP tower too (STLLaVA-Med): the base tower is the --vision-tower folder's
        if not vision_tower:
            fail(src, "the adapter tunes the vision tower; pass --vision-tower FOLDER with the CLIP it was trained on")
        from transformers import CLIPVisionModel

        from stmed.errors import loading_model

        with loading_model(vision_tower):
            clip = CLIPVisionModel.from_pretrained(vision_tower).state_dict()
        state.update({TOWER + ("" if k.startswith("vision_model.") else "vision_model.") + k: v for k, v in clip.items()})
    merge(src, state, adapter, scale, strip, f"--model-base {base}")
    return state


def read_adapter(folder: Path) -> tuple[dict, float]:
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
        fail(folder, "LoRA weights without adapter_config.json (its r and lora_alpha scale them)")
    acfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    return adapter, acfg["lora_alpha"] / acfg["r"]  # rank_pattern / alpha_pattern: LLaVA's scripts set none


def merge(src: Path, state: dict, adapter: dict, scale: float, target_of, where: str) -> None:
    """Fold each LoRA pair into its weight in ``state``: W += scale * B @ A (peft's merge_and_unload)."""
    for key in [k for k in adapter if ".lora_A." in k]:
        target = target_of(key.replace(".lora_A.default", "").replace(".lora_A", ""))
        if target not in state:
            fail(src, f"the adapter's {key} has no base weight {target} in {where}")
        a, b = adapter[key].float(), adapter[key.replace("lora_A", "lora_B")].float()
        state[target] = (state[target].float() + scale * (b @ a)).to(state[target].dtype)


def merged_vision(src: Path, tower: dict, folder: str) -> dict:
    """A peft adapter made on LLaVA's CLIPVisionTower wrapper (keys base_model.model.vision_tower.
    vision_model.*), merged into the tower's CLIPVisionModel weights (``tower``, changed in place)."""
    if not Path(folder).is_dir():
        fail(src, f"--vision-lora {folder}: no such folder")
    adapter, scale = read_adapter(Path(folder))
    if not adapter:
        fail(src, f"--vision-lora {folder}: no LoRA weights (adapter_model.*) in that folder")
    prefixed = any(k.startswith("vision_model.") for k in tower)

    def target(key: str) -> str:
        key = key.removeprefix("base_model.model.").removeprefix("vision_tower.")
        return key if prefixed else key.removeprefix("vision_model.")

    merge(src, tower, adapter, scale, target, "the vision tower")
    return tower
