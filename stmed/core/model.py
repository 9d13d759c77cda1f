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
from stmed.options import opt


@dataclass(frozen=True)
class ModelSpec:
    """A model to load, and how. Every field but ``model`` is also a flag of every command that
    loads a model (``-m`` itself is each command's own: required, optional, or ``--judge-model``)."""

    model: str = ""
    adapter: str | None = opt(None, "peft adapter folder applied on the model.", metavar="DIR")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = opt("auto", "auto | bfloat16 | float16 | float32 (auto: bf16 on a GPU that has it).")
    trust_remote_code: bool = opt(False, "Allow the model repo's own Python code.", flags="--trust-remote-code")
    chat_template: str | None = opt(None, "Jinja chat template file (or a chat_template.json) replacing the model's own.",
                                     metavar="FILE")


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


def on_gpu() -> bool:
    """Whether torch sees a CUDA GPU: the one place every "auto" choice (device, dtype, gradient
    checkpointing, the trainer's use_cpu) asks."""
    import torch

    return torch.cuda.is_available()


def resolve_device(name: str):
    import torch

    if name == "auto":
        if not on_gpu():
            return torch.device("cpu")
        from stmed.distributed import world

        w = world()  # under a launcher, each process takes its own GPU (LOCAL_RANK)
        return torch.device(f"cuda:{w.local_rank % torch.cuda.device_count()}" if w.active else "cuda")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not on_gpu():
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


def quiet_hf() -> None:
    """transformers quiet but for errors and without progress bars, tokenizers without its fork
    warning: stderr keeps stmed's own lines and progress bar."""
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
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    processor = load_processor(spec)
    model = load_weights(spec.model, dtype, trust_remote_code=spec.trust_remote_code, adapter=spec.adapter)
    model.to(device).eval()
    ensure_pad_token(processor).padding_side = "left"  # decoder-only generation needs the prompt flush right
    return Loaded(model=model, processor=processor, spec=spec, device=device, dtype=dtype)


def load_weights(model: str, dtype, *, trust_remote_code: bool = False, adapter: str | None = None):
    """The one ``from_pretrained`` of a vision-language model, for inference, training and merging
    alike: a model that does not load is one InputError line; ``adapter`` is merged into the weights
    (inference and a merged checkpoint then cost what the base model costs)."""
    from transformers import AutoModelForImageTextToText

    from stmed.core.cluster import register

    quiet_hf()
    register()  # a converted STLLaVA-Med (cluster projector) loads without remote code
    with loading_model(model):
        loaded = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype, trust_remote_code=trust_remote_code)
    return _apply_adapter(loaded, adapter) if adapter else loaded


def ensure_pad_token(processor):
    """The processor's tokenizer, given a pad token (its EOS) where it has none: batches need one."""
    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_processor(spec: ModelSpec):
    """The checkpoint's processor with the chat template every stage renders with (see
    ``template.use_template``), or one InputError line."""
    from transformers import AutoProcessor

    from stmed.core.cluster import register
    from stmed.core.template import use_template

    quiet_hf()
    register()  # AutoProcessor reads config.json's model_type too
    with loading_model(spec.model):
        processor = AutoProcessor.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code)
    use_template(processor, spec.chat_template)
    return processor


def adapter_config(adapter: str) -> dict:
    """The adapter folder's adapter_config.json, or one InputError line."""
    import json

    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise InputError(f"--adapter {adapter}: no adapter_config.json in that folder")
    return json.loads(path.read_text(encoding="utf-8"))


def _apply_adapter(model, adapter: str):
    from peft import PeftModel

    adapter_config(adapter)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()
