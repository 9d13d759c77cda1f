"""Shared prefill: a prompt with several samples is run through the model once.

gen-questions samples 5 questions from one prompt and answer 2 answers to each question; each of
those prompts carries an image of hundreds of tokens. Here the distinct prompts of a batch are
prefilled (all tokens but the last) in one forward pass, and the KV cache's rows are then copied
to every sample of that prompt. ``generate`` is called with each row's full input ids and the
filled cache, so it computes only the last prompt token per row and decodes as before: the
seeded sampler, stop strings and end tokens see exactly the ids they saw without sharing.

The forward pass is built the way ``generate`` builds its own first step (its position ids,
including Qwen2-VL's 3D M-RoPE ones, and its input preparation), so the cached keys and values
are the ones ``generate`` would have computed. M-RoPE models keep per-row position offsets
(``rope_deltas``) on the model between steps; those are copied to the sample rows too.
"""

from __future__ import annotations

from typing import Any

# Static KV caches are sized in steps of this many tokens: runs whose prompt plus new tokens
# stay within one step reuse one cache and one compiled decode step.
CACHE_BUCKET = 256

# Processor outputs with one value per token (cut and copied with input_ids).
_TOKEN_KEYS = ("attention_mask", "token_type_ids", "mm_token_type_ids")


def image_token_id(model) -> int | None:
    config = model.config
    return getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)


def can_split(model, enc) -> bool:
    """True when every prompt's last token is plain text, so it can be left out of the prefill."""
    image = image_token_id(model)
    return image is None or not bool((enc["input_ids"][:, -1] == image).any())


def static_cache(model, max_cache_len: int):
    from transformers import StaticCache

    return StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=max_cache_len)


def _mrope_holder(model):
    """The module that keeps M-RoPE ``rope_deltas`` between generation steps (Qwen2-VL), if any."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "rope_deltas") else None


def shared(loaded, enc, rows, cache=None) -> dict[str, Any]:
    """``generate`` inputs for the batch: ``enc`` holds the distinct prompts, ``rows`` the
    distinct prompt of each batch row. ``cache`` is a static cache to fill (already reset), or
    None for a dynamic one."""
    from transformers import DynamicCache

    model = loaded.model
    ids = enc["input_ids"][:, :-1]
    kwargs = {k: v for k, v in enc.items() if k != "input_ids"}
    for key in _TOKEN_KEYS:
        if key in kwargs:
            kwargs[key] = kwargs[key][:, :-1]
    prompt_cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    kwargs.update(cache=prompt_cache, use_cache=True)
    holder = _mrope_holder(model)
    if holder is not None:
        holder.rope_deltas = None  # computed afresh for these prompts, as generate's first step does
    kwargs["position_ids"] = model._prepare_position_ids_for_generation(ids, {"input_ids": ids, **kwargs})
    step = model.prepare_inputs_for_generation(ids, is_first_iteration=True, logits_to_keep=1, **kwargs)
    model(**step, return_dict=True)
    if holder is not None and holder.rope_deltas is not None:
        holder.rope_deltas = holder.rope_deltas[rows]
    if cache is None:
        prompt_cache.batch_select_indices(rows)
    else:  # into the run's static cache, a layer at a time (never two full-batch caches at once)
        for target, source in zip(cache.layers, prompt_cache.layers):
            target.update(source.keys[rows], source.values[rows])
            source.keys = source.values = None
        prompt_cache = cache
    inputs = {"input_ids": enc["input_ids"][rows], "cache": prompt_cache}
    for key in _TOKEN_KEYS:
        if key in enc:
            inputs[key] = enc[key][rows]
    return inputs
