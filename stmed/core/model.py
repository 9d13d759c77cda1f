"""Load a vision-language model and its processor once, for every stage.

Any Hugging Face VLM that ``AutoModelForImageTextToText`` knows works: llava-hf checkpoints,
LLaVA-Med converted to llava-hf format, Qwen2-VL, and the tiny model from tools/. Remote code
runs only when the user asks for it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stmed.errors import InputError, loading_model


@dataclass(frozen=True)
class ModelSpec:
    model: str
    adapter: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto: bf16 on a GPU that has it, else float32
    trust_remote_code: bool = False
    chat_template: str | None = None  # --chat-template FILE: replaces the checkpoint's template


@dataclass
class Loaded:
    model: Any
    processor: Any
    spec: ModelSpec
    device: Any
    dtype: Any

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def describe(self) -> dict:
        """What made an output, for the record's ``gen`` field."""
        return {"model": self.spec.model, "adapter": self.spec.adapter, "dtype": str(self.dtype).replace("torch.", "")}


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is visible to torch on this machine")
    return dev


def resolve_dtype(name: str, device):
    import torch

    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32  # CPU matmuls in half precision are slow and less reproducible
    if name not in table:
        raise InputError(f"--dtype {name!r}: expected one of auto, {', '.join(table)}")
    return table[name]


def _quiet_hf() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def load_model(spec: ModelSpec) -> Loaded:
    """Model in eval mode on its device, processor padding on the left for batched generation."""
    local = Path(spec.model).expanduser()
    if spec.model.startswith((".", "/", "~")) and not local.exists():  # before the slow imports
        raise InputError(f"-m {spec.model}: no such model folder")
    from transformers import AutoModelForImageTextToText

    _quiet_hf()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    processor = load_processor(spec)
    with loading_model(spec.model):
        model = AutoModelForImageTextToText.from_pretrained(
            spec.model, dtype=dtype, trust_remote_code=spec.trust_remote_code
        )
    if spec.adapter:
        model = _apply_adapter(model, spec.adapter)
    model.to(device).eval()
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"  # decoder-only generation needs the prompt flush right
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return Loaded(model=model, processor=processor, spec=spec, device=device, dtype=dtype)


def load_processor(spec: ModelSpec):
    """The checkpoint's processor with the chat template every stage renders with (see
    ``template.use_template``), or one InputError line."""
    from transformers import AutoProcessor

    from stmed.core.template import use_template

    _quiet_hf()
    with loading_model(spec.model):
        processor = AutoProcessor.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code)
    use_template(processor, spec.chat_template)
    return processor


def _apply_adapter(model, adapter: str):
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").exists():
        raise InputError(f"--adapter {adapter}: no adapter_config.json in that folder")
    # Merged into the weights: inference then costs the same as the base model.
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()
