"""Empirical privacy audit: a membership-inference attack run on the trained model before the
deploy gate, turned into a statistical lower bound on the model's epsilon.

What the number means
---------------------
`epsilon_lower_bound` is a LOWER bound from one weak, black-box attack (the loss threshold of
Yeom et al. 2018). It is not an estimate of the model's privacy:

* passing it proves nothing. A model can leak far more than a loss threshold reveals, and the
  ledger's epsilon (the accountant's upper bound) stays the only privacy claim;
* exceeding the ledger's epsilon means that the accounting does not describe the training
  that actually ran (a bug: noise not applied, clipping skipped, rows counted wrong, a sampler
  that is not Poisson), short of the 1 - confidence chance of a wrong certificate and of
  non-members that are not exchangeable with members (see Assumptions). policies.rego denies
  the deploy then.

How the bound is made (Jagielski et al. 2020, "Auditing Differentially Private Machine
Learning"; Nasr et al. 2021, "Adversary Instantiation")
---------------------------------------------------------------------------------------
The attack scores each example with its negative cross-entropy loss (members of the training
set tend to have lower loss) and calls an example a member when its score is >= a threshold t.
At t it has a false-positive rate FPR (non-members called members) and a false-negative rate
FNR. Any (eps, delta)-DP training satisfies, for every t,

    FPR + e^eps * FNR >= 1 - delta     and     FNR + e^eps * FPR >= 1 - delta

so with upper confidence limits FPR_hi, FNR_hi on the true rates,

    eps >= max( log((1 - delta - FNR_hi) / FPR_hi),  log((1 - delta - FPR_hi) / FNR_hi) )

(each term only where its numerator is > 0). The rates' limits are one-sided Clopper-Pearson
bounds, each at level 1 - (1 - confidence)/2: both must hold at once for the bound to hold, and
the union bound gives the stated `confidence` for the pair (Bonferroni).

Choosing t on the examples that then certify it would inflate the bound (the maximum of many
noisy bounds is biased up). So the member and non-member sets are each shuffled and halved:
t is chosen on the first halves, and the bound is certified at that single t on the second
halves, which played no part in choosing it. To choose t we maximise the bound computed with
Clopper-Pearson limits on the first halves rather than the raw point estimate the literature
describes: at FPR = 0 the point estimate is infinite, and the selection would chase thresholds
with a handful of true positives that certify nothing. Any rule that looks only at the first
halves keeps the certificate valid.

Member and non-member sets are balanced first (the larger subsampled, seeded, to the size of
the smaller), so `members == non_members` in the result; AUC and TPR at 1% FPR are descriptive
statistics of those balanced sets, not certified.

Assumptions, and where this is conservative or not
--------------------------------------------------
* Members and non-members must be exchangeable: drawn from the same population and assigned to
  training at random (the pipeline's keyed-hash train/holdout split is such an assignment).
  Non-members from another source, period or preprocessing make the attack separate the
  sources, and the "bound" then measures distribution shift, not privacy. Nothing here can
  check this; the caller must.
* The bound treats the examples of one trained model as independent trials. For non-members
  that is exact: given the model, they are i.i.d. draws it never saw. For members it is the
  standard single-model approximation: the DP inequalities above hold on average over training
  runs, and one run's members share the model. The fully rigorous one-run audit (Steinke,
  Nasr and Jagielski 2023) needs independent coin-flip inclusion of each audited example,
  which a caller-supplied member set does not give us. Read a bound that exceeds the ledger
  as "the accounting is very likely wrong, investigate", which is how the deploy policy uses
  it; the statistical choices that are ours (Bonferroni over the two rates, one threshold
  chosen on held-apart data and certified as it is, exact Clopper-Pearson limits rather than
  normal approximations) all err on the conservative side. Measured in
  tests/unit/test_membership_audit.py: on 400 null audits (members and non-members from one
  distribution) it claimed epsilon > 0 in none, and on randomized response with known epsilon
  it exceeded that epsilon in 1-2% of audits, inside the 5% allowed.
* `delta` should be the delta the ledger reports the run's epsilon at, so that both numbers
  are about the same (eps, delta) curve point.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

ATTACK_LOSS_THRESHOLD = "loss_threshold"

# TPR is reported at this false-positive rate (Carlini et al. 2022, "Membership Inference
# Attacks From First Principles": the low-FPR regime is where an attack is dangerous).
LOW_FPR = 0.01

# Fewer than this many examples per group leaves a certification half of one member and one
# non-member, which can never certify anything; refuse rather than report a meaningless 0.
MIN_PER_GROUP = 4


@dataclass
class AuditResult:
    """One attack's outcome. `members`/`non_members` are the balanced counts actually used;
    `threshold` is on the attack score (for loss_threshold: negative cross-entropy, members
    predicted where score >= threshold, i.e. loss <= -threshold), None when no threshold
    could be chosen."""

    attack: str
    members: int
    non_members: int
    auc: float
    tpr_at_1pct_fpr: float
    epsilon_lower_bound: float
    delta: float
    threshold: float | None
    confidence: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def membership_audit(model: nn.Module, X_members, y_members, X_non_members, y_non_members, *, delta: float,
                     confidence: float = 0.95, seed: int = 0) -> AuditResult:
    """Loss-threshold membership inference on `model`: members are rows it was trained on,
    non-members rows from the same population it never saw (see the module docstring for
    what the resulting epsilon lower bound does and does not mean)."""
    member_scores = loss_scores(model, X_members, y_members, what="members")
    non_member_scores = loss_scores(model, X_non_members, y_non_members, what="non-members")
    return audit_scores(member_scores, non_member_scores, delta=delta, confidence=confidence, seed=seed,
                        attack=ATTACK_LOSS_THRESHOLD)


@torch.no_grad()
def loss_scores(model: nn.Module, X, y, *, batch_size: int = 4096, what: str = "examples") -> np.ndarray:
    """Negative per-example cross-entropy of `model` (logits out) on (X, y), as float64.

    The model is put in eval mode for scoring (dropout off) and returned to its former mode.
    """
    X_t = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X, dtype=torch.float32)
    y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if X_t.ndim != 2:
        raise ValueError(f"{what}: X must be a 2-D (rows, features) array, got shape {tuple(X_t.shape)}")
    if y_t.ndim != 1 or len(y_t) != len(X_t):
        raise ValueError(f"{what}: y must be 1-D with one label per row of X ({len(X_t)}), got shape {tuple(y_t.shape)}")
    if y_t.is_floating_point():
        if not torch.all(y_t == torch.round(y_t)):
            raise ValueError(f"{what}: labels must be class indices (integers), got fractional values")
    y_t = y_t.long()
    if len(y_t) and int(y_t.min()) < 0:
        raise ValueError(f"{what}: labels must be class indices >= 0, got {int(y_t.min())}")
    params = next(model.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(X_t), batch_size):
            logits = model(X_t[start:start + batch_size].to(device))
            yb = y_t[start:start + batch_size].to(device)
            if logits.ndim != 2 or len(logits) != len(yb):
                raise ValueError(f"{what}: the model must return (batch, classes) logits, got shape {tuple(logits.shape)}")
            if int(yb.max()) >= logits.shape[1]:
                raise ValueError(f"{what}: label {int(yb.max())} is not one of the model's {logits.shape[1]} classes")
            out.append(-nn.functional.cross_entropy(logits.float(), yb, reduction="none").double().cpu())
    finally:
        model.train(was_training)
    scores = torch.cat(out).numpy() if out else np.empty(0)
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        # Finite logits always give a finite loss; inf/NaN means the model itself is broken.
        raise ValueError(f"{what}: the model gave a non-finite loss on {bad} of {len(scores)} rows")
    return scores


def audit_scores(member_scores, non_member_scores, *, delta: float, confidence: float = 0.95, seed: int = 0,
                 attack: str = ATTACK_LOSS_THRESHOLD) -> AuditResult:
    """The audit on attack scores already computed (higher score = more likely a member):
    balance, halve, choose the threshold on one half, certify it on the other."""
    _check_level("confidence", confidence)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise ValueError(f"delta must be a number in [0, 1), got {delta!r}")
    members = _as_scores(member_scores, "member scores")
    non_members = _as_scores(non_member_scores, "non-member scores")
    k = min(len(members), len(non_members))
    if k < MIN_PER_GROUP:
        raise ValueError(f"a membership audit needs at least {MIN_PER_GROUP} members and {MIN_PER_GROUP} non-members; "
                         f"got {len(members)} and {len(non_members)}")

    rng = np.random.default_rng(seed)
    members = rng.permutation(members)[:k]
    non_members = rng.permutation(non_members)[:k]
    # Both sets are already in random order, so their first halves are random halves.
    half = k // 2
    choose_m, certify_m = members[:half], members[half:]
    choose_n, certify_n = non_members[:half], non_members[half:]

    threshold = _choose_threshold(choose_m, choose_n, delta=delta, confidence=confidence)
    if threshold is None:
        bound = 0.0
    else:
        bound = epsilon_lower_bound(
            false_positives=int(np.count_nonzero(certify_n >= threshold)), negatives=len(certify_n),
            false_negatives=int(np.count_nonzero(certify_m < threshold)), positives=len(certify_m),
            delta=delta, confidence=confidence)
    return AuditResult(
        attack=attack, members=k, non_members=k,
        auc=roc_auc(members, non_members), tpr_at_1pct_fpr=tpr_at_fpr(members, non_members, LOW_FPR),
        epsilon_lower_bound=bound, delta=float(delta),
        threshold=None if threshold is None else float(threshold), confidence=float(confidence))


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def clopper_pearson_upper(successes, trials: int, confidence: float):
    """One-sided Clopper-Pearson upper limit on a binomial rate: P(rate <= limit) >= confidence.
    Vectorised over `successes`; 1.0 where successes == trials."""
    _check_level("confidence", confidence)
    k, n = _check_counts(successes, trials)
    with np.errstate(invalid="ignore"):
        hi = np.where(k < n, stats.beta.ppf(confidence, k + 1, np.maximum(n - k, 1)), 1.0)
    return float(hi) if np.ndim(hi) == 0 else hi


def clopper_pearson_lower(successes, trials: int, confidence: float):
    """One-sided Clopper-Pearson lower limit: P(rate >= limit) >= confidence; 0.0 where
    successes == 0."""
    _check_level("confidence", confidence)
    k, n = _check_counts(successes, trials)
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(1 - confidence, np.maximum(k, 1), n - k + 1), 0.0)
    return float(lo) if np.ndim(lo) == 0 else lo


def epsilon_lower_bound(*, false_positives: int, negatives: int, false_negatives: int, positives: int,
                        delta: float, confidence: float = 0.95) -> float:
    """The (eps, delta)-DP lower bound certified by one threshold's error counts, at joint
    `confidence` (each rate's Clopper-Pearson limit at 1 - (1 - confidence)/2); 0.0 when the
    counts rule out nothing."""
    raw = _raw_bound(np.asarray(false_positives), negatives, np.asarray(false_negatives), positives,
                     delta=delta, confidence=confidence)
    return max(0.0, float(raw))


def _raw_bound(fp, negatives: int, fn, positives: int, *, delta: float, confidence: float):
    """Vectorised bound, -inf where neither term is defined; negative values kept (they rank
    thresholds during selection)."""
    per_rate = 1 - (1 - confidence) / 2
    fpr_hi = np.asarray(clopper_pearson_upper(fp, negatives, per_rate), dtype=float)
    fnr_hi = np.asarray(clopper_pearson_upper(fn, positives, per_rate), dtype=float)
    # A Clopper-Pearson upper limit is > 0 even for zero errors, so the denominators are safe.
    with np.errstate(divide="ignore", invalid="ignore"):
        member_side = np.where(1 - delta - fnr_hi > 0, np.log(np.maximum(1 - delta - fnr_hi, 1e-300) / fpr_hi), -np.inf)
        non_member_side = np.where(1 - delta - fpr_hi > 0, np.log(np.maximum(1 - delta - fpr_hi, 1e-300) / fnr_hi), -np.inf)
    return np.maximum(member_side, non_member_side)


def _choose_threshold(members: np.ndarray, non_members: np.ndarray, *, delta: float, confidence: float) -> float | None:
    # Every distinct score is a candidate ("member" where score >= t); thresholds between two
    # scores or outside their range split the examples no differently.
    candidates = np.unique(np.concatenate([members, non_members]))
    if len(candidates) == 0 or len(members) == 0 or len(non_members) == 0:
        return None
    fp = len(non_members) - np.searchsorted(np.sort(non_members), candidates, side="left")
    fn = np.searchsorted(np.sort(members), candidates, side="left")
    bounds = _raw_bound(fp, len(non_members), fn, len(members), delta=delta, confidence=confidence)
    if not np.any(np.isfinite(bounds)):
        return None
    return float(candidates[int(np.argmax(bounds))])


def roc_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(member score > non-member score) + 0.5 P(tie): the Mann-Whitney form of ROC AUC."""
    ranks = stats.rankdata(np.concatenate([members, non_members]))  # ties get their mean rank
    m, n = len(members), len(non_members)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def tpr_at_fpr(members: np.ndarray, non_members: np.ndarray, fpr: float) -> float:
    """The largest true-positive rate of a rule "member where score >= t" whose false-positive
    rate is at most `fpr` (no interpolation between thresholds)."""
    allowed = math.floor(fpr * len(non_members) + 1e-9)
    candidates = np.append(np.unique(np.concatenate([members, non_members])), np.inf)
    fp = len(non_members) - np.searchsorted(np.sort(non_members), candidates, side="left")
    tp = len(members) - np.searchsorted(np.sort(members), candidates, side="left")
    return float(tp[fp <= allowed].max() / len(members))


def _as_scores(values, what: str) -> np.ndarray:
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain {int(np.count_nonzero(~np.isfinite(arr)))} non-finite values")
    return arr


def _check_level(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")


def _check_counts(successes, trials) -> tuple[np.ndarray, int]:
    if isinstance(trials, bool) or int(trials) != trials or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    k = np.asarray(successes)
    if k.dtype.kind not in "iu" and not np.all(k == np.round(k)):
        raise ValueError(f"successes must be whole counts, got {successes!r}")
    k = k.astype(np.int64)
    if np.any(k < 0) or np.any(k > trials):
        raise ValueError(f"successes must lie in [0, {int(trials)}], got {successes!r}")
    return k, int(trials)
