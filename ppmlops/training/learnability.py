"""Can this run learn? A public estimate from the plan, before the training budget is spent.

Two things stop DP-SGD from learning, and the plan can see both.

Too few steps. Each step moves the weights by the learning rate times the mean of clipped
gradients, a vector of norm at most the clip norm C; over T steps the weights can travel at most

    update_reach = learning_rate * T * C

Clipping makes each step far shorter than a non-private one, so a run of the same epochs can
end where it started: on UCI Adult (benchmarks/learnability.py) the MLP stays at the majority class
with a reach of 47 at every epsilon up to 16, while the same steps without DP reach 0.83, and it
learns from a reach of 94 on. More epochs (or a larger learning rate, or a smaller batch) help.

Too much noise. DP-SGD adds Gaussian noise of standard deviation sigma * C to the sum of a batch's clipped
gradients (each of norm at most C) in every one of the model's d parameters. Over T steps with an
expected batch of B rows, the summed update holds at most T * B * C of signal and noise of norm
about sqrt(T) * sigma * C * sqrt(d). Their ratio

    signal_to_noise = sqrt(T) * B / (sigma * sqrt(d))

is the best case for the run (every row's gradient of full norm, all pointing one way): below a
few, the noise swamps whatever the rows say (on Adult, a ratio of 2.1 ends below the majority
class however many steps it takes, 2.5 and more learn). For Poisson sampling at rate q = B / n over E epochs, T = E / q, and the
calibrated sigma grows as q * sqrt(T) / epsilon, so the ratio is about n * epsilon / sqrt(d): the
familiar rate of private learning (rows times epsilon per square root of the dimension). It says
what would help: more rows or more epsilon (linearly), or fewer parameters (a smaller model, fewer
features; as their square root); more epochs do not (the noise grows with them).

Everything here is public or post-processing of a charged release: the noisy training-row count
(released at assess), the spec's batch, epochs and model, the plan's noise multiplier. The
parameters counted are those the rows' inputs reach; the canary audit's extra input columns are
zero on every real row, so the noise on their weights never moves a prediction and is left out.

The floors (policies.rego, utility.min_signal_to_noise and utility.min_update_reach) are the
policy's; benchmarks/learnability.py measures where learning starts on UCI Adult.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict


class Learnability(BaseModel):
    """PUBLIC. The plan's estimate of whether the run can learn (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: float  # the noisy training-row count
    parameters: int  # the model's parameters that real inputs reach
    steps: int
    expected_batch: float
    noise_multiplier: float
    epochs: int
    learning_rate: float
    max_grad_norm: float
    epsilon: float  # the run's epsilon this estimate is for
    signal_to_noise: float
    update_reach: float


def estimate(*, rows: float, parameters: int, steps: int, epochs: int, expected_batch: float,
             noise_multiplier: float, learning_rate: float, max_grad_norm: float, epsilon: float) -> Learnability:
    snr = (math.sqrt(steps) * expected_batch / (noise_multiplier * math.sqrt(parameters))
           if noise_multiplier > 0 and parameters > 0 and math.isfinite(noise_multiplier) else 0.0)
    return Learnability(rows=float(rows), parameters=int(parameters), steps=int(steps), epochs=int(epochs),
                        expected_batch=float(expected_batch), noise_multiplier=float(noise_multiplier),
                        learning_rate=float(learning_rate), max_grad_norm=float(max_grad_norm),
                        epsilon=float(epsilon), signal_to_noise=float(snr),
                        update_reach=float(learning_rate) * int(steps) * float(max_grad_norm))


def builtin_parameters(kind: str, n_features: int, hidden: Sequence[int], n_outputs: int) -> int:
    """The parameter count of a built-in model (ppmlops.training.models.build_model), without torch."""
    widths = [] if kind == "logistic" else [int(w) for w in hidden]
    count, width_in = 0, int(n_features)
    for w in widths + [int(n_outputs)]:
        count += width_in * w + w
        width_in = w
    return count
