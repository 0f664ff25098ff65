"""What ppmlops.training.private_model relies on in Opacus, checked by name so that an Opacus upgrade
that moves it fails here, loudly, with the version and the hook, instead of training quietly
without the CSPRNG noise.

private_model no longer imports Opacus's private helpers (_check_processed_flag,
_mark_as_processed: its double-release guard is its own flag). What it still relies on is the
step's shape: its mixin overrides add_noise, scale_grad, reduce_gradients (and accumulate for fast
clipping), which only works while Opacus's pre_step and step call those methods by those names.
If a release renamed one, the override would replace nothing and Opacus's own code would run,
with torch's generator instead of ppmlops's. test_privacy_noise checks the noise's size end to
end; this test says which hook moved.
"""

from __future__ import annotations

import inspect
import re

import opacus
import pytest
from opacus.optimizers import DistributedDPOptimizer, DistributedDPOptimizerFastGradientClipping

from ppmlops.training.private_model import CsprngDistributedDPOptimizer, CsprngFastClippingOptimizer, CsprngNoise

# Opacus class -> (method of it, the hooks that method must call on self).
CALLS = {
    DistributedDPOptimizer: {"pre_step": ("add_noise", "scale_grad"), "step": ("pre_step", "reduce_gradients")},
    DistributedDPOptimizerFastGradientClipping: {"pre_step": ("accumulate", "add_noise", "scale_grad"),
                                                 "step": ("pre_step", "reduce_gradients")},
}
OURS = {CsprngDistributedDPOptimizer: DistributedDPOptimizer,
        CsprngFastClippingOptimizer: DistributedDPOptimizerFastGradientClipping}


def _hooks(ours: type) -> set[str]:
    """The Opacus methods our classes override (public names defined by us, not by Opacus)."""
    mine = set(vars(CsprngNoise)) | set(vars(ours))
    return {name for name in mine if not name.startswith("_") and callable(getattr(ours, name))}


@pytest.mark.parametrize("ours", list(OURS), ids=lambda c: c.__name__)
def test_every_method_private_model_overrides_exists_in_opacus(ours):
    base = OURS[ours]
    missing = sorted(h for h in _hooks(ours) if not any(h in vars(k) for k in base.__mro__))
    assert not missing, (f"opacus {opacus.__version__}: {base.__name__} no longer defines {missing}, which "
                         f"ppmlops.training.private_model.{ours.__name__} overrides: the override replaces nothing; "
                         "read the new release's optimizer and move the CSPRNG noise to its new hook")


@pytest.mark.parametrize("base", list(CALLS), ids=lambda c: c.__name__)
def test_opacus_steps_still_call_the_hooks_private_model_overrides(base):
    for method, hooks in CALLS[base].items():
        source = inspect.getsource(getattr(base, method))
        for hook in hooks:
            assert re.search(rf"\bself\.{hook}\(", source), (
                f"opacus {opacus.__version__}: {base.__name__}.{method} no longer calls self.{hook}(), which "
                "ppmlops.training.private_model overrides: its CSPRNG noise, scaling or reduction would not run")
