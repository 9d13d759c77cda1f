"""Preference methods beyond the paper's plain DPO, on the same pairs: weighted pairs and mDPO's
image-conditional term. The paper's method (every weight 1, no image term) stays the default.

- Weighted pairs (``--weight margin|FIELD``): each pair's loss is scaled by a number from its
  record (the judge's margin, or any field a user adds, such as MMedPO's clinical relevance),
  normalised to mean 1 over the training pairs so the learning rate keeps its meaning. The weight
  reaches trl's own loss code, for every loss type but the batch-wise aot ones, through trl's
  per-pair weighting (WPO's ``use_weighting``): see ``wpo_slot``.
- Image-conditional preference (``--image-pref W``, mDPO, Wang et al. 2024): besides the usual
  term, W x -log sigmoid(beta x ((log pi - log ref)(chosen | image) - (log pi - log ref)(chosen |
  corrupted image))), so the chosen answer must become likelier given the real image than given a
  corrupted copy. The copy is the pair's own ``corrupt`` (a hard negative's image) or
  ``--image-pref-corrupt`` (mDPO's crop keeping 20% of the image), seeded by the pair's id.
"""

from __future__ import annotations

import json
import math

from stmed.corrupt import FIELD, Corruption
from stmed.errors import InputError, RecordError
from stmed.records import Record

# The preference methods `stmed compare` trains side by side, each as the dpo options that select
# it ({option: value}, as in a --config file); docs/training.md ("Beyond the paper") says where
# each comes from. The paper's method first.
VARIANTS: dict[str, dict] = {
    "dpo": {},  # STLLaVA-Med: sigmoid DPO, beta 0.1
    "dpo+sft": {"loss": "sigmoid=1,sft=1"},  # RPO: DPO plus the chosen answer's NLL
    "ipo": {"loss": "ipo"},
    "wpo": {"wpo": True},  # each pair by its answers' probability under the policy
    "weighted": {"weight": "margin"},  # each pair by the judge's margin (MMedPO's weighting)
    "image-pref": {"image_pref": 1.0},  # mDPO's image-conditional term
}
# Plain DPO on other pairs: the corrupted-image hard negatives of `stmed judge --hard-negative corrupt`.
HARD_NEGATIVES = "hard-negatives"


def record_weight(rec: Record, field: str) -> float:
    """The pair's raw weight from ``field``: a finite number >= 0, else RecordError naming file:line."""
    value = rec.get(field)
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer past float's range
        number = math.inf
    if not math.isfinite(number) or number < 0:
        what = "missing" if field not in rec else f"got {json.dumps(value)[:40]}"
        raise RecordError(f"{rec.where}: --weight {field} needs a number >= 0 in field {field!r} ({what})")
    return number


def normalised(weights: list[float], field: str) -> list[float]:
    """Weights over mean 1 (so a weighted run's step size matches an unweighted one's)."""
    mean = math.fsum(w / len(weights) for w in weights)  # divided first: 1e308-sized weights stay finite
    if mean <= 0:
        raise InputError(f"--weight {field}: every pair's weight is 0, so nothing would be learned")
    return [w / mean for w in weights]


def corrupt_spec(rec: Record, default: Corruption, base_seed: int) -> str:
    """The corruption of this pair's image for the image-conditional term, as a JSON string: the
    record's own (the image its rejected answer was sampled on) or the default, seeded by id."""
    if rec.get(FIELD) is not None:
        return json.dumps(Corruption.from_record(rec[FIELD], rec.where).record())
    from stmed.stages.common import seed_for

    key = str(rec.get("id") or rec.get("image") or rec.where)
    return json.dumps(default.with_seed(seed_for(base_seed, key, 0)).record())


def corrupted(image, spec: str):
    """The corrupted copy ``corrupt_spec`` describes (applied before padding and --max-pixels)."""
    return Corruption.from_record(json.loads(spec), "pair").apply(image)


def wpo_slot(log_probs, log_sum_sq_probs, mask, pair_weight, wpo: bool):
    """The ``log_sum_sq_probs`` to hand trl so that its WPO weighting multiplies each pair's loss
    by ``pair_weight`` (times WPO's own weight when ``wpo``).

    trl (1.16, ``use_weighting``) scales pair i's loss by exp(mean over answer tokens of
    (log_probs - log_sum_sq_probs)) for its chosen row times the same for its rejected row, under
    no_grad. Subtracting log(w_i) from every chosen-row token of the second term multiplies that
    weight by w_i; without WPO the second term is set to ``log_probs`` itself, so trl's own factor
    is exactly 1. Rows are [chosen block; rejected block], as trl reads them.
    """
    import torch

    with torch.no_grad():
        base = log_sum_sq_probs if wpo else log_probs.detach()
        shift = torch.zeros(log_probs.shape[0], device=log_probs.device, dtype=log_probs.dtype)
        # a weight of 0 becomes 1e-30, not log(0): -inf times the padding's 0 would be NaN in trl's sum
        shift[: pair_weight.shape[0]] = torch.log(pair_weight.to(log_probs).clamp(min=1e-30))
        return (base - shift[:, None]) * mask


def image_pref_loss(chosen_real, ref_real, chosen_corrupt, ref_corrupt, beta: float, pair_weight=None):
    """mDPO's conditional term (its Eq. 3), per pair, then the (weighted) mean; and the margin."""
    import torch.nn.functional as F

    margin = beta * ((chosen_real - ref_real) - (chosen_corrupt - ref_corrupt))
    loss = -F.logsigmoid(margin)
    if pair_weight is not None:
        loss = loss * pair_weight.to(loss)
    return loss.mean(), margin.detach()
