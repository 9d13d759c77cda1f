"""The vLLM engine (``--engine vllm``): the fast path for generation on GPUs.

It gets the same prompts as the transformers engine, as token ids from stmed's one token path
(``core.prompt.prompt_ids``: the model's own chat template, then the tokenizer), with the image
as ``multi_modal_data``; vLLM expands the one image placeholder itself, as the HF
processor does. So the vuser strategy (continuing in the user's role) runs unchanged, and the
emitted ids come back in every output, for DPO and SFT to train on.

Seeds: every sample is its own vLLM request with its own seed, derived from the recorded seed
and the prompt's ids. vLLM reuses one random stream for one seed on different prompts, so the
recorded seed alone (answers use 40 and 42 for every question) would tie the samples of
different questions together; and a CPU build ignores a request's seed when another request in
its batch has none (vllm-project/vllm#51226), so no request goes without one (greedy ones too).
A sample is then the same on a rerun and whatever its batch mates, on the same machine and
vLLM version.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from stmed.core.generate import GenOutput, GenRequest, SamplingParams, cut_at_stop
from stmed.core.prompt import encode, end_ids, prompt_ids, prompt_text
from stmed.engines.base import settings
from stmed.errors import InputError, loading_model
from stmed.options import opt

VLLM_SUPPORTED = ("0.32.",)  # vLLM releases whose API this engine was checked against


def request_seed(seed: int | None, prompt_ids: Sequence[int]) -> int:
    """The seed vLLM gets for a sample: the recorded seed (0 when greedy) and the prompt's ids."""
    digest = hashlib.sha256(f"{0 if seed is None else seed}\0{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise InputError("--engine vllm: vLLM is not installed in this environment; `make vllm-env` builds "
                         ".venv-vllm with it (run stmed as .venv-vllm/bin/stmed), or pip install vllm") from None
    if not vllm.__version__.startswith(VLLM_SUPPORTED):
        raise InputError(f"--engine vllm: vLLM {vllm.__version__} is installed; stmed's engine is checked against "
                         f"vLLM {' / '.join(v + 'x' for v in VLLM_SUPPORTED)}: pip install 'vllm==0.32.*' (or make vllm-env)")
    return vllm


@dataclass
class VLLMSettings:
    tensor_parallel_size: int = opt(1, "vllm: GPUs one model copy is split over.", min=1)
    gpu_memory_utilization: float = opt(0.9, "vllm: share of each GPU's memory vLLM may take.", min=0.05, max=1.0)
    max_model_len: int | None = opt(None, "vllm: longest prompt + answer, in tokens (default: the model's).")
    enforce_eager: bool = opt(False, "vllm: no CUDA graphs (slower; less memory and start-up time).",
                              flags="--enforce-eager")


class VLLMEngine:
    """A model loaded once into vLLM in this process, behind stmed's engine interface."""

    name = "vllm"

    @classmethod
    def from_options(cls, options, spec) -> VLLMEngine:
        return cls(spec, batch_size=options.batch_size, **settings(VLLMSettings, options))

    def __init__(self, spec, *, batch_size: int = 256, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, enforce_eager: bool = False):
        _refuse_cluster(spec.model)
        vllm = _import_vllm()
        from stmed.core.model import adapter_config, ensure_pad_token, load_processor, on_gpu, resolve_device, resolve_dtype
        from stmed.distributed import world

        self.spec, self.batch_size = spec, batch_size
        self.processor = load_processor(spec)  # the chat template and tokenizer of the token path
        self.tokenizer = ensure_pad_token(self.processor)
        device = resolve_device(spec.device)
        self.dtype = str(resolve_dtype(spec.dtype, device)).replace("torch.", "")
        w = world()
        if w.active and tensor_parallel_size > 1:
            raise InputError("--tensor-parallel-size above 1 under a launcher: start one process per model copy "
                             "(vLLM spreads one copy over the GPUs itself), or launch with tensor parallel size 1")
        if w.active and on_gpu():
            import torch

            torch.cuda.set_device(device)  # each process of a launch runs its own engine on its own GPU
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # reproducible offline runs (vLLM docs)
        if not on_gpu():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU build
        kwargs = dict(model=spec.model, tokenizer=spec.model, dtype=self.dtype, trust_remote_code=spec.trust_remote_code,
                      tensor_parallel_size=tensor_parallel_size, limit_mm_per_prompt={"image": 1}, seed=0,
                      enforce_eager=enforce_eager or not on_gpu(), max_num_seqs=batch_size)
        if on_gpu():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.lora = None
        if spec.adapter:
            from vllm.lora.request import LoRARequest

            rank = int(adapter_config(spec.adapter).get("r", 8))
            kwargs.update(enable_lora=True, max_lora_rank=max(8, rank), max_loras=1)
            self.lora = LoRARequest("adapter", 1, str(spec.adapter))
        with loading_model(spec.model):
            self.llm = vllm.LLM(**kwargs)
        self._vllm = vllm
        self.stop_ids = end_ids(self.processor)  # vLLM adds the checkpoint's generation_config EOS itself

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.spec.model, "adapter": self.spec.adapter, "dtype": self.dtype,
                "vllm": self._vllm.__version__}

    def prompt_ids(self, req: GenRequest) -> list[int]:
        """The prompt as token ids with one image placeholder (vLLM expands it, as the HF processor would)."""
        return prompt_ids(self.processor, req)

    def _sampling(self, params: SamplingParams, seed: int, **extra):
        greedy = params.greedy
        return self._vllm.SamplingParams(
            n=1, seed=seed, max_tokens=params.max_new_tokens, temperature=0.0 if greedy else params.temperature,
            top_k=0 if greedy or not params.top_k else params.top_k, top_p=1.0 if greedy else params.top_p,
            stop=list(params.stop) or None, stop_token_ids=self.stop_ids, ignore_eos=params.ignore_eos,
            skip_special_tokens=True, **extra)

    def _prompt(self, ids: list[int], image) -> dict:
        prompt = {"prompt_token_ids": ids}
        if image is not None:
            prompt["multi_modal_data"] = {"image": image}
        return prompt

    def generate(self, requests: Sequence[GenRequest], params: SamplingParams) -> Iterator[tuple[int, GenOutput]]:
        """(request index, output) in request order: one vLLM request per (request, seed)."""
        prompts, sampling, owner = [], [], []
        ids_of = [self.prompt_ids(r) for r in requests]
        for i, req in enumerate(requests):
            for seed in req.seeds:
                prompts.append(self._prompt(ids_of[i], req.image))
                sampling.append(self._sampling(params, request_seed(seed, ids_of[i])))
                owner.append(i)
        results = self.llm.generate(prompts, sampling, use_tqdm=False, lora_request=self.lora)
        by_request: dict[int, list] = {}
        for i, res in zip(owner, results):
            by_request.setdefault(i, []).append(res)
        for i in range(len(requests)):
            texts, tokens, emitted = [], [], []
            for res in by_request.get(i, []):
                out = res.outputs[0]
                ids = list(out.token_ids)
                while ids and ids[-1] in self.stop_ids and not params.ignore_eos:
                    ids.pop()  # the end token is the template's, not the answer's (training appends it)
                texts.append(cut_at_stop(out.text, params.stop))
                tokens.append(len(ids))  # as the transformers engine counts: the end token left out
                emitted.append(ids)
            yield i, GenOutput(texts, tokens, ids=emitted, prompt_ids=list(by_request[i][0].prompt_token_ids)
                               if by_request.get(i) else None)

    def choice_logprobs(self, requests: Sequence[GenRequest], choices: Sequence[str], batch_size: int = 8) -> list[dict]:
        """Log-probability of each choice's first own token right after each prompt, from vLLM's
        prompt log-probs (the prompt extended by that token; the shared prefix is cached)."""
        from stmed.core.generate import divergence

        prompts, sampling, where = [], [], []
        for r, req in enumerate(requests):
            text = prompt_text(self.processor, req)
            drop, tokens = divergence(self.tokenizer, text, choices)
            prefix = encode(self.tokenizer, text + choices[0])[:-drop]  # where the choices first differ
            for c, token in zip(choices, tokens):
                prompts.append(self._prompt(prefix + [token], req.image))
                sampling.append(self._vllm.SamplingParams(max_tokens=1, temperature=0.0, seed=0, prompt_logprobs=0))
                where.append((r, c, token))
        results: list[dict] = [{} for _ in requests]
        for (r, c, token), res in zip(where, self.llm.generate(prompts, sampling, use_tqdm=False,
                                                                lora_request=self.lora)):
            results[r][c] = float(res.prompt_logprobs[-1][token].logprob)
        return results


def _refuse_cluster(model: str) -> None:
    """vLLM has no model for SQ-LLaVA's cluster projector (a converted STLLaVA-Med): one line, before it loads."""
    import json
    from pathlib import Path

    from stmed.core.cluster import MODEL_TYPE

    config = Path(model).expanduser() / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE:
        raise InputError(f"--engine vllm: -m {model} has SQ-LLaVA's cluster projector, which vLLM does not "
                         "implement; run it with --engine hf")
