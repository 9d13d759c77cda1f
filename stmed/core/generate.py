"""Batched generation for every stage: length-sorted batches, left padding, seeded samples.

Each sample carries its own seed and its own random stream: sampling is done by a logits
processor that draws, for row r at step t, the t-th uniform of a generator seeded with that
row's seed, and then lets ``generate`` pick that token greedily. So a seed gives the same text
whether it runs alone or in a batch of 64, which torch's one shared generator cannot promise.
On out-of-memory a batch is split in half and the batch size stays smaller from then on.
The samples of one prompt in a batch share one prefill of that prompt (stmed/core/prefill.py);
with ``static_cache`` the run keeps one static KV cache, so the decode step compiles once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from stmed.core.prompt import ContinueAs, TOKEN_KEYS, encode_batch, end_ids, prompt_text


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means no top-k filter
    top_p: float = 1.0
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens
    stop: tuple[str, ...] = ()  # a sample ends at the first of these (its text is cut there)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def record(self) -> dict:
        if self.greedy:
            return {"temperature": 0.0, "max_new_tokens": self.max_new_tokens}
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens}


@dataclass
class GenRequest:
    messages: list[dict]
    image: Any = None  # an RGB PIL image, or None for text-only
    seeds: Sequence[int | None] = (None,)  # one generated text per seed; None when greedy
    continue_as: ContinueAs = "assistant"
    prompt: str | None = None  # pre-rendered prompt text (overrides messages)


@dataclass
class GenOutput:
    texts: list[str]
    tokens: list[int] = field(default_factory=list)  # new tokens per sample
    ids: list[list[int]] | None = None  # the ids each sample emitted, its end token left out (local engines)
    prompt_ids: list[int] | None = None  # the prompt as the engine saw it, image tokens expanded (vLLM)

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)


class SeededSampler:
    """Temperature, top-k and top-p sampling with one random stream per row (see module doc)."""

    def __init__(self, seeds: Sequence[int], params: SamplingParams, prompt_len: int, device):
        import torch

        self.params, self.prompt_len = params, prompt_len
        rows = [torch.rand(params.max_new_tokens, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                for s in seeds]
        self.uniforms = torch.stack(rows).to(device)

    def __call__(self, input_ids, scores):
        import torch

        p = self.params
        step = input_ids.shape[1] - self.prompt_len
        logits = scores.float() / p.temperature
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        if p.top_k and p.top_k < sorted_logits.shape[-1]:
            sorted_logits[:, p.top_k:] = float("-inf")
        probs = torch.softmax(sorted_logits, dim=-1)
        if p.top_p < 1.0:
            before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly better tokens
            probs = probs.masked_fill(before > p.top_p, 0.0)
        cdf = torch.cumsum(probs.double(), dim=-1)
        u = self.uniforms[:, step].unsqueeze(1) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u).clamp(max=cdf.shape[-1] - 1)
        token = order.gather(1, pick)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token, 0.0)


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


class Generator:
    """Runs requests through a loaded model in batches; ``batch_size`` shrinks on OOM."""

    def __init__(self, loaded, batch_size: int = 8, *, static_cache: bool = False, isolate_failures: bool = False,
                 share_prefill: bool = True):
        self.loaded, self.batch_size, self.static_cache = loaded, batch_size, static_cache
        # share_prefill: a prompt with several samples (seeds) in a batch is prefilled once and its KV
        # cache copied to each sample's row (see prefill.py); False runs every row's prompt (the old way).
        self.share_prefill = share_prefill
        self.prompt_tokens = {"rows": 0, "computed": 0}  # prompt tokens of all rows / tokens prefilled
        self._static = None  # (batch, max_cache_len, StaticCache): reused so the decode step compiles once
        # isolate_failures: a batch that fails for a reason other than memory is split until the
        # failing request is alone, which is then yielded as its exception (the stage reports
        # that record and goes on) instead of ending the run.
        self.isolate_failures = isolate_failures
        self.tok = loaded.tokenizer

    def prompt_of(self, req: GenRequest) -> str:
        return prompt_text(self.loaded.processor, req)

    def run(self, requests: Sequence[GenRequest], params: SamplingParams) -> Iterator[tuple[int, GenOutput | Exception]]:
        """Yields (request index, output) as each request's samples are all done (with
        ``isolate_failures``, the exception instead of the output for a request that failed)."""
        prompts = [self.prompt_of(r) for r in requests]
        rows = [(i, k, seed) for i, r in enumerate(requests) for k, seed in enumerate(r.seeds)]
        lengths = [len(self.tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        # Longest first: equal lengths share batches (little padding) and OOM shows up early.
        rows.sort(key=lambda row: (requests[row[0]].image is None, -lengths[row[0]], row[0], row[1]))
        pending = {i: [None] * len(r.seeds) for i, r in enumerate(requests)}
        emitted: dict[int, list] = {i: [None] * len(r.seeds) for i, r in enumerate(requests)}
        start = 0
        while start < len(rows):
            batch = rows[start:start + self.batch_size]
            # Image and text-only rows never share a batch: the processor wants all or none.
            batch = [row for row in batch if (requests[row[0]].image is None) == (requests[batch[0][0]].image is None)]
            start += len(batch)
            for (i, k, _), (text, ids) in zip(batch, self._run_split(batch, requests, prompts, params)):
                pending[i][k], emitted[i][k] = text, ids
                if all(t is not None for t in pending[i]):
                    texts, ids = pending.pop(i), emitted.pop(i)
                    failed = next((t for t in texts if isinstance(t, Exception)), None)
                    yield i, failed if failed is not None else GenOutput(texts, [len(x) for x in ids], ids=ids)

    def _run_split(self, batch, requests, prompts, params) -> list[tuple[str | Exception, list[int]]]:
        try:
            return self._run_batch(batch, requests, prompts, params)
        except (RuntimeError, MemoryError, ValueError) as err:
            if not _is_oom(err):
                if not self.isolate_failures:
                    raise
                if len(batch) == 1:
                    return [(RuntimeError(f"the model failed on this input ({type(err).__name__}: {err})"), [])]
                half = len(batch) // 2
                return (self._run_split(batch[:half], requests, prompts, params)
                        + self._run_split(batch[half:], requests, prompts, params))
            if len(batch) == 1:
                raise
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(batch) // 2
            self.batch_size = max(1, min(self.batch_size, half))
            print(f"stmed: out of memory at batch {len(batch)}; continuing with batch size {self.batch_size}",
                  file=sys.stderr)
            return (self._run_split(batch[:half], requests, prompts, params)
                    + self._run_split(batch[half:], requests, prompts, params))

    def _run_batch(self, batch, requests, prompts, params) -> list[tuple[str, list[int]]]:
        import torch

        from stmed.core import prefill

        loaded = self.loaded
        real = len(batch)
        if self.static_cache and real < self.batch_size:
            batch = batch + [batch[-1]] * (self.batch_size - real)  # fixed shapes: no recompiles
        distinct = list(dict.fromkeys(i for i, _, _ in batch))
        # The static path always prefills outside generate, into the run's one cache.
        share = (self.share_prefill and len(distinct) < len(batch)) or self.static_cache
        keys = distinct if share else [i for i, _, _ in batch]
        enc = self._encode(keys, requests, prompts)
        if share and not prefill.can_split(loaded.model, enc):  # a prompt ends in an image token: the old way
            share, keys = False, [i for i, _, _ in batch]
            enc = self._encode(keys, requests, prompts)
        prompt_len = enc["input_ids"].shape[1]
        lengths = enc["attention_mask"].sum(1).tolist()
        ends = stop_ids(loaded)
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, do_sample=False, eos_token_id=ends,
                                          pad_token_id=self.tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        if params.ignore_eos:
            gen_kwargs["min_new_tokens"] = params.max_new_tokens
        if params.stop:  # e.g. a self-asked question ends where the next role header begins
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tok)
        if not params.greedy:
            seeds = [0 if s is None else s for _, _, s in batch]
            gen_kwargs["logits_processor"] = [SeededSampler(seeds, params, prompt_len, loaded.device)]
        with torch.inference_mode():
            if share:
                rows = torch.tensor([distinct.index(i) for i, _, _ in batch], device=loaded.device)
                inputs = prefill.shared(loaded, enc, rows, self._cache_for(len(batch), prompt_len, params))
                used = {distinct.index(i) for i, _, _ in batch[:real]}
                computed = sum(lengths[d] - 1 for d in used) + real
            else:
                inputs = dict(enc)
                computed = sum(lengths[:real])
                if self.static_cache:
                    gen_kwargs["cache_implementation"] = "static"
            out = loaded.model.generate(**inputs, **gen_kwargs)
        self.prompt_tokens["rows"] += sum(lengths[keys.index(i)] for i, _, _ in batch[:real])
        self.prompt_tokens["computed"] += computed
        new = out[:real, prompt_len:]
        results = []
        ends = {*ends, self.tok.pad_token_id}  # finished rows are padded after their end
        for row in new.tolist():
            n = len(row)
            if not params.ignore_eos:
                n = next((k for k, t in enumerate(row) if t in ends), n)
            text = self.tok.decode(row[:n], skip_special_tokens=True)
            results.append((cut_at_stop(text, params.stop), row[:n]))
        return results

    def _encode(self, keys, requests, prompts):
        images = [requests[i].image for i in keys]
        return on_device(self.loaded, encode_batch(self.loaded.processor, [prompts[i] for i in keys],
                                                   images if images[0] is not None else None,
                                                   pad_to_multiple_of=64 if self.static_cache else None))

    def _cache_for(self, rows: int, prompt_len: int, params: SamplingParams):
        """The run's static KV cache (None without --static-cache): one batch size and one length
        bucket, grown only when a prompt no longer fits, so the compiled decode step is reused."""
        if not self.static_cache:
            return None
        from stmed.core.prefill import CACHE_BUCKET, static_cache

        need = prompt_len + params.max_new_tokens
        if self._static is None or self._static[0] != rows or self._static[1] < need:
            size = -(-need // CACHE_BUCKET) * CACHE_BUCKET
            self._static = None  # the old cache's memory goes before the new one is allocated
            self._static = (rows, size, static_cache(self.loaded.model, size))
        else:
            self._static[2].reset()
        return self._static[2]


def stop_ids(loaded) -> list[int]:
    """``end_ids`` of a loaded transformers model, its generation_config's EOS included."""
    return end_ids(loaded.processor, getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None))


def on_device(loaded, enc):
    """A processor batch on the model's device, pixel values in the model's dtype."""
    enc = enc.to(loaded.device)
    if "pixel_values" in enc:
        enc["pixel_values"] = enc["pixel_values"].to(loaded.dtype)
    return enc


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        at = text.find(s)
        if at >= 0:
            cut = min(cut, at)
    return text[:cut].strip()


def divergence(tok, prompt: str, choices: Sequence[str]) -> tuple[int, list[int]]:
    """(tokens after the shared prefix in prompt+choices[0], each choice's first own token).

    Tokenizing the choice after the prompt, not alone, matters: a SentencePiece tokenizer
    encodes a lone "1" as ["▁", "1"], so the first tokens of "1" and "2" would be the same."""
    seqs = [tok(prompt + c, add_special_tokens=False)["input_ids"] for c in choices]
    d = 0
    while all(d < len(s) for s in seqs) and len({s[d] for s in seqs}) == 1:
        d += 1
    if any(d >= len(s) for s in seqs):
        raise ValueError(f"choices {list(choices)} are not told apart by this tokenizer")
    return len(seqs[0]) - d, [s[d] for s in seqs]


def choice_logprobs(loaded, requests: Sequence[GenRequest], choices: Sequence[str], batch_size: int = 8) -> list[dict]:
    """Log-probability of each choice where the choices first differ, right after each prompt."""
    import torch

    gen = Generator(loaded, batch_size)
    tok = loaded.tokenizer
    prompts = [gen.prompt_of(r) for r in requests]
    splits = [divergence(tok, p, choices) for p in prompts]
    results: list[dict | None] = [None] * len(requests)
    groups: dict[int, list[int]] = {}
    for i, (drop, _) in enumerate(splits):
        groups.setdefault(drop, []).append(i)  # rows in a batch drop the same number of final tokens
    for drop, members in groups.items():
        for start in range(0, len(members), batch_size):
            rows = members[start:start + batch_size]
            images = [requests[i].image for i in rows]
            enc = on_device(loaded, encode_batch(loaded.processor, [prompts[i] + choices[0] for i in rows],
                                                 images if all(img is not None for img in images) else None))
            for key in ("input_ids", *TOKEN_KEYS):
                if key in enc:
                    enc[key] = enc[key][:, :-drop]
            with torch.inference_mode():
                logp = torch.log_softmax(loaded.model(**enc).logits[:, -1, :].float(), dim=-1)
            for row, i in zip(logp, rows):
                results[i] = {c: float(row[t]) for c, t in zip(choices, splits[i][1])}
    return results
