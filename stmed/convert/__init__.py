"""Checkpoints in the original LLaVA code's layout (LLaVA-1.5, LLaVA-Med v1.5, STLLaVA-Med) turned
into the llava-hf layout every stmed command loads (``AutoModelForImageTextToText`` + ``AutoProcessor``).

    llava.py      the original layout read: config.json, weights, CLIP tower, projector, tokenizer
    cluster.py    SQ-LLaVA's cluster projector: its weights and the model class stmed.core.cluster registers
    lora.py       LoRA folded in: a LoRA run with non_lora_trainables.bin onto its base, the ViT LoRA
    templates.py  the original conversation templates (vicuna_v1, mistral_instruct) as chat templates
    run.py        ConvertOptions and convert(): build the llava-hf model and write its folder

Nothing in stmed imports this package but ``stmed convert``; the model class a converted STLLaVA-Med
loads with (``stmed.core.cluster``) lives in the core, and this package imports it, never the reverse.
"""

from stmed.convert.run import ConvertOptions, convert

__all__ = ["ConvertOptions", "convert"]
