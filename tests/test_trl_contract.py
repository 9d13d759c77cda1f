"""stmed's DPO step hands trl's private ``DPOTrainer._compute_loss`` outputs it computed itself
(stmed.train.dpo). Private code changes without notice between releases: these tests read the
installed trl's method and fail, naming what to re-check, when it no longer takes what stmed gives."""

from __future__ import annotations

import hashlib
import inspect
import re

import pytest

trl = pytest.importorskip("trl")

# sha256 (first 16 hex digits) of DPOTrainer._compute_loss's source in the trl releases whose
# method stmed's override was read against and trained with (tests/test_dpo.py).
VERIFIED = {"5e58a1699e0d76cd": "trl 1.16.0"}


def _source() -> str:
    from trl import DPOTrainer

    return inspect.getsource(DPOTrainer._compute_loss)


def test_compute_loss_takes_what_stmed_passes():
    from trl import DPOTrainer

    from stmed.train.dpo import STAGED_INPUTS

    params = list(inspect.signature(DPOTrainer._compute_loss).parameters)
    assert params == ["self", "model", "inputs", "return_outputs"], (
        f"trl {trl.__version__} changed DPOTrainer._compute_loss's signature to {params}: "
        "update StmedDPOTrainer._compute_loss in stmed/train/dpo.py")
    read = set(re.findall(r'inputs\["(\w+)"\]', _source()))
    assert read <= set(STAGED_INPUTS), (
        f"trl {trl.__version__}'s _compute_loss reads inputs {sorted(read - set(STAGED_INPUTS))} that stmed's "
        "staged batch lacks (stmed/train/dpo.py)")
    assert "self.precompute_ref_logps" in _source(), (
        "trl no longer switches on precompute_ref_logps: stmed's reference log-probs would be recomputed by trl")


def test_compute_loss_reads_only_outputs_stmed_fills():
    from trl.trainer.utils import FusedCausalLMOutput

    from stmed.train.dpo import FUSED_FIELDS

    read = set(re.findall(r"outputs\.(\w+)", _source())) - {"aux_loss"}  # aux_loss: only for MoE models
    assert read <= set(FUSED_FIELDS), f"trl's loss reads model outputs {sorted(read - set(FUSED_FIELDS))} stmed does not fill"
    assert set(FUSED_FIELDS) <= set(FusedCausalLMOutput.__dataclass_fields__), "FusedCausalLMOutput lost a field stmed sets"


def test_compute_loss_source_is_a_verified_one():
    digest = hashlib.sha256(_source().encode()).hexdigest()[:16]
    assert digest in VERIFIED, (
        f"trl {trl.__version__}'s DPOTrainer._compute_loss differs from every version stmed's DPO step was checked "
        f"against ({', '.join(VERIFIED.values())}); read it against StmedDPOTrainer in stmed/train/dpo.py, run "
        f"tests/test_dpo.py, then add {digest!r} to VERIFIED")
