"""Log-probabilities of preference pairs, with the image prompt computed once per pair.

A DPO pair is one prompt (576 image tokens + the question, for LLaVA-1.5) and two short
answers. The usual way (trl's) runs prompt+chosen and prompt+rejected as two full sequences,
so the vision tower and ~90% of the language-model tokens are computed twice, in the policy
pass and again in the reference pass. Here the prompt is run once with a KV cache, the cache
is repeated for the two answers, and only the answers are run on top of it; gradients flow
back through the cache into the prompt's LoRA activations, so the result is the same DPO
gradient for about half the work and memory.

This module needs only torch and transformers (no trl), so the GPU benchmark runs it as is.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

IMAGE_KEYS = ("pixel_values", "pixel_attention_mask", "image_sizes", "image_grid_thw")  # per image, not per token


class PairCollator:
    """Examples {"images": [PIL], "prompt", "chosen_ids", "rejected_ids"} -> one padded batch.

    Prompts go through the processor exactly as generation sends them (stmed.core.generate.
    encode_batch: left padding, BOS once, each sample its own images); answers are the ids
    stmed.train.data tokenized after that prompt, end-of-turn token included, rows interleaved
    as [chosen_0, rejected_0, chosen_1, ...]. Whatever else the processor gives per prompt token
    (mm_token_type_ids, token_type_ids) comes along as ``prompt_<key>``. ``max_length`` only ever
    shortens answers: cutting the prompt would cut image tokens.
    """

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.tok = getattr(processor, "tokenizer", processor)
        self.max_length = max_length

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        import torch

        from stmed.core.prompt import encode_batch

        prompts = [ex["prompt"] for ex in examples]
        enc = encode_batch(self.processor, prompts, [ex["images"][0] for ex in examples])
        answers = [list(a) for ex in examples for a in (ex["chosen_ids"], ex["rejected_ids"])]
        if self.max_length is not None:
            room = max(1, self.max_length - enc["input_ids"].shape[1])
            answers = [a[:room] for a in answers]
        width = max(len(a) for a in answers)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.tensor([a + [pad] * (width - len(a)) for a in answers])
        mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
        batch = {**_prompt(enc), "completion_ids": ids, "completion_attention_mask": mask}
        if "corrupt_images" in examples[0]:  # the same prompts on the corrupted images (stmed.train.variants)
            bad = encode_batch(self.processor, prompts, [ex["corrupt_images"][0] for ex in examples])
            batch.update({f"{CORRUPT}{k}": v for k, v in _prompt(bad).items()})
        if "weight" in examples[0]:
            batch["pair_weight"] = torch.tensor([float(ex["weight"]) for ex in examples])
        return batch


CORRUPT = "corrupt_"  # the prefix of the corrupted-image prompt's keys in a batch


def _prompt(enc) -> dict:
    """The prompt's part of a batch: ids, mask, image tensors and per-token extras."""
    from stmed.core.prompt import TOKEN_KEYS

    return {"prompt_input_ids": enc["input_ids"], "prompt_attention_mask": enc["attention_mask"],
            **{k: enc[k] for k in IMAGE_KEYS if k in enc},
            **{f"prompt_{k}": enc[k] for k in TOKEN_KEYS if k in enc and k != "attention_mask"}}


def corrupted_batch(batch: dict) -> dict:
    """The batch with its prompts on the corrupted images, the same answers."""
    return {**{k[len(CORRUPT):]: v for k, v in batch.items() if k.startswith(CORRUPT)},
            "completion_ids": batch["completion_ids"], "completion_attention_mask": batch["completion_attention_mask"]}


@dataclass
class PairOutput:
    """Per answer token, rows ordered [chosen block; rejected block] as trl expects."""

    log_probs: Any  # (2B, C), zero where mask is 0; carries the gradient
    mask: Any  # (2B, C) answer-token mask
    entropy: Any
    mean_logits: Any
    is_top1: Any
    log_sum_sq_probs: Any

    def sums(self):
        """Summed answer log-probs: (chosen (B,), rejected (B,))."""
        return self.log_probs.sum(-1).chunk(2)


def _bare(model):
    """The transformers model under peft and DDP/DeepSpeed wrappers."""
    while hasattr(model, "get_base_model") or hasattr(model, "module"):
        model = model.get_base_model() if hasattr(model, "get_base_model") else model.module
    return model


def _cache_kwarg(model) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); pass whichever this one takes."""
    params = inspect.signature(type(_bare(model)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def uses_mrope(model) -> bool:
    """Multimodal RoPE (Qwen2-VL and kin): the model derives 3-D positions from the image grid
    itself when ``position_ids`` is None, so the 1-D positions the shared-prefix path passes
    would be wrong."""
    base = _bare(model)
    return hasattr(base, "get_rope_index") or hasattr(getattr(base, "model", None), "get_rope_index")


def _image_kwargs(batch: dict, repeat: int = 1) -> dict:
    import torch

    out = {k: batch[k] for k in IMAGE_KEYS if k in batch}
    if repeat == 1:
        return out
    grid = out.get("image_grid_thw")
    if grid is not None and "pixel_values" in out:
        # Qwen2-VL's pixel_values are every image's patches stacked along dim 0: repeat whole
        # images (blocks of t*h*w rows), not single rows.
        blocks = out.pop("pixel_values").split(grid.prod(-1).tolist())
        return {**{k: v.repeat_interleave(repeat, dim=0) for k, v in out.items()},
                "pixel_values": torch.cat([b for b in blocks for _ in range(repeat)])}
    return {k: v.repeat_interleave(repeat, dim=0) for k, v in out.items()}


def _stats(logits, ids, mask, batch_size: int) -> PairOutput:
    """Token log-probs and trl's per-token metrics from answer logits (B2, C, V)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    tok_logp = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
    with torch.no_grad():
        probs = logp.exp()
        entropy = -(probs * logp).sum(-1) * mask
        mean_logits = logits.float().mean(-1) * mask
        is_top1 = (logits.argmax(-1) == ids) & mask.bool()
        log_sum_sq = torch.logsumexp(2 * logp, dim=-1) * mask

    def order(t):  # interleaved (c0, r0, c1, r1, ...) -> (c0, c1, ..., r0, r1, ...)
        return t.view(batch_size, 2, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    return PairOutput(order(tok_logp), order(mask), order(entropy), order(mean_logits), order(is_top1),
                      order(log_sum_sq))


def shared_prefix_logps(model, batch: dict, *, prompt_model=None) -> PairOutput:
    """Prompt once (with cache), then both answers on the repeated cache.

    ``prompt_model`` runs the prompt pass when ``model`` is a DDP wrapper: DDP must see one
    forward per backward, so the prompt goes through the bare module and the answers through
    the wrapper; autograd still sums every parameter's gradient before DDP's hooks fire.
    """
    import torch
    from transformers import DynamicCache

    if uses_mrope(model):
        raise ValueError("the shared-prefix path passes 1-D position ids, which M-RoPE models (Qwen2-VL) "
                         "compute themselves in 3-D: use concat_logps")
    p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    ids, mask = batch["completion_ids"], batch["completion_attention_mask"]
    b = p_ids.shape[0]
    key = _cache_kwarg(model)
    cache = DynamicCache()
    p_pos = (p_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
    out = (prompt_model or model)(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
                                  logits_to_keep=1, **{key: cache}, **_image_kwargs(batch))
    first = out.logits[:, -1:].repeat_interleave(2, dim=0)  # predicts each answer's first token
    cache.batch_repeat_interleave(2)
    lens = p_mask.long().sum(-1).repeat_interleave(2)
    c_pos = lens[:, None] + torch.arange(ids.shape[1], device=ids.device)[None]
    full_mask = torch.cat([p_mask.repeat_interleave(2, dim=0), mask], dim=1)
    out2 = model(input_ids=ids, attention_mask=full_mask, position_ids=c_pos, use_cache=True, **{key: cache})
    logits = torch.cat([first, out2.logits[:, :-1]], dim=1)
    return _stats(logits, ids, mask, b)


def concat_logps(model, batch: dict) -> PairOutput:
    """The usual way: prompt+chosen and prompt+rejected as two full sequences each (baseline)."""
    import torch

    p_ids, p_mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    ids, mask = batch["completion_ids"], batch["completion_attention_mask"]
    full_ids = torch.cat([p_ids.repeat_interleave(2, dim=0), ids], dim=1)
    full_mask = torch.cat([p_mask.repeat_interleave(2, dim=0), mask], dim=1)
    # Left padding: real tokens start at position 0. M-RoPE models derive their own (3-D) positions.
    pos = None if uses_mrope(model) else (full_mask.long().cumsum(-1) - 1).clamp(min=0)
    extra = _image_kwargs(batch, repeat=2)
    for key in _token_keys(batch):  # answers hold text tokens only: type 0
        types = batch[f"prompt_{key}"].repeat_interleave(2, dim=0)
        extra[key] = torch.cat([types, torch.zeros_like(ids)], dim=1)
    out = model(input_ids=full_ids, attention_mask=full_mask, position_ids=pos, use_cache=False,
                logits_to_keep=ids.shape[1] + 1, **extra)
    return _stats(out.logits[:, :-1], ids, mask, p_ids.shape[0])


def _token_keys(batch: dict) -> list[str]:
    """Per-token processor outputs the prompt carries besides its ids and mask."""
    return [k[len("prompt_"):] for k in batch if k.startswith("prompt_") and k not in
            ("prompt_input_ids", "prompt_attention_mask")]


def pair_logps(model, batch: dict, *, share_prefix: bool = True, prompt_model=None) -> PairOutput:
    """The shared-prefix way where the model allows it, else the usual way: M-RoPE models (see
    ``uses_mrope``) and prompts with per-token types (Gemma 3's bidirectional image attention
    reads token_type_ids over the whole sequence) run each answer with its whole prompt."""
    if share_prefix and not uses_mrope(model) and not _token_keys(batch):
        return shared_prefix_logps(model, batch, prompt_model=prompt_model)
    return concat_logps(model, batch)


def sigmoid_dpo_loss(policy: PairOutput, ref_chosen, ref_rejected, beta: float = 0.1):
    """The paper's loss (DPO, sigmoid): -log sigmoid(beta * (policy log-ratio - reference log-ratio))."""
    import torch.nn.functional as F

    chosen, rejected = policy.sums()
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean(), beta * margin.detach()
