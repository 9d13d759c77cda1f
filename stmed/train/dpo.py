"""`stmed dpo`: preference training on trl's DPOTrainer with a peft LoRA adapter.

The reference model is the same model with the adapter disabled (no second copy). What
stmed changes in trl's step is only how the log-probs are computed (stmed.train.pairs: the
image prompt once per pair instead of once per answer, in the policy and the reference pass);
the loss, every loss type, the metrics and the logging are trl's own code.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from stmed.core.model import on_gpu
from stmed.errors import InputError
from stmed.records import ErrorSink, file_sha256
from stmed.train.common import (DPOConfig, leave_no_empty_outdir, load_for_training, load_processor, lora_config,
                                prepare_outdir, say, trainer_kwargs, write_meta)
from stmed.train.data import load_pairs, read_any

# stmed's step reuses trl internals (FusedCausalLMOutput, DPOTrainer._compute_loss and its
# precompute_ref_logps switch) that move between minor releases; pyproject.toml pins this range.
TRL_NEEDED = ">=1.16,<1.17"
# What the step hands trl's _compute_loss (pinned against the installed trl by tests/test_trl_contract.py).
STAGED_INPUTS = ("input_ids", "completion_mask", "attention_mask", "ref_chosen_logps", "ref_rejected_logps")
FUSED_FIELDS = ("loss", "log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def check_trl() -> None:
    """One InputError line, before any work, when the installed trl lacks what the step uses."""
    import importlib.metadata as md

    try:
        installed = md.version("trl")
    except md.PackageNotFoundError:
        installed = "none"
    try:
        from trl import DPOConfig as TrlDPOConfig
        from trl import DPOTrainer
        from trl.trainer.utils import FusedCausalLMOutput  # noqa: F401

        usable = hasattr(DPOTrainer, "_compute_loss") and "precompute_ref_log_probs" in TrlDPOConfig.__dataclass_fields__
    except (ImportError, AttributeError):
        usable = False
    if not usable:
        raise InputError(f"stmed dpo needs trl{TRL_NEEDED}, but trl {installed} is installed: "
                         f"pip install 'trl{TRL_NEEDED}'")


class _Fixed:
    """Stands in for the model inside trl's loss code: returns the outputs computed already."""

    def __init__(self, outputs):
        self.outputs = outputs

    def __call__(self, *args, **kwargs):
        return self.outputs


def trainer_class():
    import torch
    from trl import DPOTrainer
    from trl.trainer.utils import FusedCausalLMOutput

    from stmed.train.pairs import corrupted_batch, pair_logps
    from stmed.train.variants import image_pref_loss, wpo_slot

    class StmedDPOTrainer(DPOTrainer):
        share_prefix = True
        wpo = False  # trl's own WPO factor too, besides any per-pair weight
        image_pref = 0.0  # the weight of mDPO's image-conditional term (0: the paper's plain DPO)

        def _ref_context(self):
            if self.ref_model is not None:
                return contextlib.nullcontext()
            unwrapped = self.accelerator.unwrap_model(self.model)
            return unwrapped.disable_adapter()

        def _compute_loss(self, model, inputs, return_outputs):
            unwrapped = self.accelerator.unwrap_model(model)
            # DDP must see one forward per backward: the prompt pass runs on the bare module.
            policy = pair_logps(model, inputs, share_prefix=self.share_prefix,
                                prompt_model=unwrapped if unwrapped is not model else None)
            ref_model = self.ref_model if self.ref_model is not None else unwrapped
            with torch.no_grad(), self._ref_context():
                ref_chosen, ref_rejected = pair_logps(ref_model, inputs, share_prefix=self.share_prefix).sums()
            zero = torch.zeros_like(policy.mask[:, :1])
            weight = inputs.get("pair_weight")
            lss = policy.log_sum_sq_probs if weight is None else wpo_slot(
                policy.log_probs, policy.log_sum_sq_probs, policy.mask, weight, self.wpo)
            outputs = dict(loss=None, log_probs=policy.log_probs, entropy=policy.entropy,
                           log_sum_sq_probs=lss, mean_logits=policy.mean_logits,
                           is_top1=policy.is_top1, label_mask=policy.mask.bool())
            assert tuple(outputs) == FUSED_FIELDS, "FUSED_FIELDS must name what the step fills"
            fused = FusedCausalLMOutput(**outputs)
            b = inputs["prompt_input_ids"].shape[0]
            ids = inputs["completion_ids"].view(b, 2, -1).transpose(0, 1).reshape(2 * b, -1)  # [chosen; rejected]
            # trl's loss reads answers after a one-token shift; a leading zero column lines them up.
            staged = {
                "input_ids": torch.cat([torch.zeros_like(ids[:, :1]), ids], dim=1),
                "completion_mask": torch.cat([zero, policy.mask], dim=1).long(),
                "attention_mask": torch.cat([inputs["prompt_attention_mask"].repeat(2, 1), policy.mask.long()], 1),
                "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected,
            }
            assert tuple(staged) == STAGED_INPUTS, "STAGED_INPUTS must name what the step hands trl"
            saved, self.precompute_ref_logps = self.precompute_ref_logps, True
            try:
                loss = super()._compute_loss(_Fixed(fused), staged, return_outputs=False)
            finally:
                self.precompute_ref_logps = saved
            if self.image_pref:
                loss = loss + self.image_pref * self._image_term(unwrapped, inputs, policy.sums()[0], ref_chosen)
            return loss

        def _image_term(self, unwrapped, inputs, chosen, ref_chosen):
            """mDPO's conditional term: the chosen answer on the real image against the same answer
            on the corrupted one (run on the bare module, as the shared prompt pass is)."""
            bad = corrupted_batch(inputs)
            policy = pair_logps(unwrapped, bad, share_prefix=self.share_prefix).sums()[0]
            ref_model = self.ref_model if self.ref_model is not None else unwrapped
            with torch.no_grad(), self._ref_context():
                ref = pair_logps(ref_model, bad, share_prefix=self.share_prefix).sums()[0]
            term, margin = image_pref_loss(chosen, ref_chosen, policy, ref, self.beta, inputs.get("pair_weight"))
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["image_pref/loss"].append(self.accelerator.gather(term.detach()).mean().item())
            self._metrics[mode]["image_pref/margin"].append(self.accelerator.gather(margin).mean().item())
            return term

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return self._compute_loss(model, inputs, return_outputs)

    return StmedDPOTrainer


def run(cfg: DPOConfig) -> dict:
    """Train on the pairs in ``cfg.data``; returns the summary that the command prints."""
    # A malformed or empty file stops here: before the slow imports, and before OUTDIR exists.
    if not read_any(cfg.data):
        raise InputError(f"{cfg.data}: no records (empty input)")
    check_trl()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames, not the user's concern

    from stmed.train.loop import callbacks, fit
    from stmed.train.pairs import uses_mrope

    if cfg.dry_run:
        return dry_run(cfg)
    resume_from = prepare_outdir(cfg)
    # The data is read with the processor alone, so a bad file fails before the model loads;
    # a model that does not load stops before OUTDIR exists.
    processor = load_processor(cfg)
    with leave_no_empty_outdir(cfg):
        from stmed.train.common import error_sink

        errors = error_sink(cfg)  # written by the main process only
        try:
            dataset, images = _pairs(cfg, processor, errors)
        finally:
            errors.close()
        say(cfg, f"{len(dataset)} pairs, {errors.count} rejected")
        if errors.count:
            say(cfg, f"{errors.count} failed record(s) listed in {errors.path}")
        model, processor = load_for_training(cfg, wrap=False, processor=processor)
    write_meta(cfg, "dpo", {"path": str(cfg.data), "sha256": file_sha256(cfg.data), "pairs": len(dataset),
                            "rejected": errors.count, "images": images})
    share_prefix = cfg.share_prefix
    if share_prefix and uses_mrope(model):
        share_prefix = False
        say(cfg, f"{cfg.model} uses M-RoPE (3-D positions from the image grid): computing each answer with "
                 "its own prompt (trl's way) instead of sharing the prompt")
    trainer = make_trainer(cfg, model, processor, dataset, share_prefix, callbacks(cfg))
    summary = fit(trainer, cfg, resume_from, processor)
    return {"pairs": len(dataset), "rejected": errors.count, **summary}


def make_trainer(cfg: DPOConfig, model, processor, dataset, share_prefix: bool, callbacks=None):
    """trl's DPOTrainer with stmed's step, configured from ``cfg`` (the adapter added unless --full)."""
    from transformers import PrinterCallback
    from trl import DPOConfig as TrlDPOConfig

    from stmed.train.pairs import PairCollator

    checkpointing = bool(cfg.gradient_checkpointing) if cfg.gradient_checkpointing is not None else (
        not share_prefix and on_gpu())
    args = TrlDPOConfig(**trainer_kwargs(cfg, checkpointing), beta=cfg.beta, loss_type=list(cfg.loss),
                        loss_weights=cfg.loss_weights, max_length=cfg.max_length,
                        use_weighting=cfg.wpo or cfg.weight != "none",  # per-pair weights ride on it (variants)
                        # keep LoRA's dropout (the paper's 0.05); the base model has no active dropout
                        disable_dropout=False)
    from peft import PeftModel

    peft_config = None if cfg.full or isinstance(model, PeftModel) else lora_config(cfg)
    trainer = trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=processor,
                              peft_config=peft_config, data_collator=PairCollator(processor, cfg.max_length),
                              callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout; ours go to train_log.jsonl
    trainer.share_prefix = share_prefix and not trainer.is_fsdp_enabled  # FSDP needs one root forward
    trainer.wpo, trainer.image_pref = cfg.wpo, cfg.image_pref
    return trainer


def _pairs(cfg: DPOConfig, processor, errors: ErrorSink):
    from stmed.corrupt import Corruption

    corrupt = Corruption.parse(cfg.image_pref_corrupt, flag="--image-pref-corrupt") if cfg.image_pref else None
    return load_pairs(cfg.data, processor, errors=errors, limit=cfg.limit,
                      flags={"pad_square": cfg.pad_square, "max_pixels": cfg.max_pixels},
                      image_root=Path(cfg.image_root) if cfg.image_root else None,
                      weight=cfg.weight, image_pref_corrupt=corrupt, seed=cfg.seed)


def dry_run(cfg: DPOConfig) -> dict:
    """The first pair exactly as training sees it (prompt ids as the collator makes them, each
    answer's ids with its end token), after loading the model and the data; nothing is written."""
    from stmed.train.pairs import PairCollator

    processor = load_processor(cfg)
    errors = ErrorSink(None)
    dataset, images = _pairs(cfg, processor, errors)
    load_for_training(cfg, wrap=False, processor=processor)
    batch = PairCollator(processor, cfg.max_length)([dataset[0]])
    tok = getattr(processor, "tokenizer", processor)
    out = {"id": dataset[0]["id"], "images": images}
    if "weight" in dataset[0]:
        out["weight"] = round(dataset[0]["weight"], 6)  # over the pairs' mean
    if "corrupt" in dataset[0]:
        import json

        out["image_pref_corrupt"] = json.loads(dataset[0]["corrupt"])
    from stmed.core.prompt import rendering

    if rendering(processor):
        out["rendering"] = rendering(processor)
    rows = {"prompt": (batch["prompt_input_ids"][0], batch["prompt_attention_mask"][0]),
            "chosen": (batch["completion_ids"][0], batch["completion_attention_mask"][0]),
            "rejected": (batch["completion_ids"][1], batch["completion_attention_mask"][1])}
    for name, (ids, mask) in rows.items():
        kept = ids[mask.bool()].tolist()
        out[f"{name}_ids"], out[f"{name}_tokens"] = kept, tok.convert_ids_to_tokens(kept)
    return {"dry_run": out, "pairs": len(dataset), "rejected": errors.count}
