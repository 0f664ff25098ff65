"""Every model ppmlops trains, evaluates or serves is built here: a built-in (`model.kind`,
ppmlops.training.models) or the user's own (`model.factory: "package.module:callable"`).

A factory is called as `callable(n_features=..., n_outputs=..., **model.args)` and returns an
nn.Module mapping (batch, n_features) float32 to (batch, n_outputs) logits; with a tensor feature
(ppmlops.spec.TensorFeature) also `input_shape=[...]`, its declared shape, while the rows still
arrive flat (n_features = prod(input_shape), C order) for the module to reshape. It is called wherever
the model is (re)built: the workers, each trial of a private search, the evaluate stage and the
served MLflow model, so its module must be importable in each of those processes. What a run
trained records the factory, its args and the module's version next to the weights (`saved_model`),
and `rebuild` builds the same model again from that record alone.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from torch import nn

from ppmlops.errors import ModelError
from ppmlops.run.records import ModelCode
from ppmlops.spec import FactoryRef
from ppmlops.training.models import N_CLASSES, build_model

log = logging.getLogger(__name__)
IMPORTABLE = ("it must be importable (installed, or on PYTHONPATH) wherever the run trains and wherever "
              "the model is served")


def load(target: str) -> Callable[..., Any]:
    """The callable `target` ("package.module:callable") names; ModelError naming it otherwise."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - a module that fails to import, for any reason, is named
        raise ModelError(f"model.factory {target!r}: cannot import module {module_name!r} "
                         f"({type(err).__name__}: {err}); {IMPORTABLE}") from None
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise ModelError(f"model.factory {target!r}: module {module_name!r} has no attribute {attr!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ModelError(f"model.factory {target!r}: {attr!r} is a {type(found).__name__}, not a callable")
    return found


def build_own(ref: FactoryRef, n_features: int, n_outputs: int = N_CLASSES) -> tuple[nn.Module, list[str]]:
    """The factory's model, with BatchNorm replaced when `ref.fix_batchnorm`, and what was replaced."""
    factory = load(ref.target)
    # A tensor feature's shape goes to the factory as input_shape; a table's factory is called as
    # it always was, so factories written for tables need not accept the keyword.
    shaped = {"input_shape": list(ref.input_shape)} if ref.input_shape is not None else {}
    try:
        net = factory(n_features=n_features, n_outputs=n_outputs, **shaped, **ref.args)
    except Exception as err:  # noqa: BLE001 - the factory's own error, named as the factory's
        called = f"n_features={n_features}, n_outputs={n_outputs}" + (f", input_shape={shaped['input_shape']}"
                                                                       if shaped else "")
        raise ModelError(f"model.factory {ref.target!r} raised {type(err).__name__}: {err} (called with "
                         f"{called} and args {dict(ref.args)})") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"model.factory {ref.target!r} returned a {type(net).__name__}, not a torch.nn.Module")
    return fix_batchnorm(net) if ref.fix_batchnorm else (net, [])


def fix_batchnorm(net: nn.Module) -> tuple[nn.Module, list[str]]:
    """Opacus's ModuleValidator.fix (BatchNorm becomes GroupNorm), and each layer it replaced."""
    from opacus.validators import ModuleValidator

    before = {name: type(m).__name__ for name, m in net.named_modules() if name}
    fixed = ModuleValidator.fix(net)
    after = {name: type(m).__name__ for name, m in fixed.named_modules() if name}
    return fixed, [f"{name}: {kind} -> {after.get(name, 'removed')}" for name, kind in before.items()
                   if after.get(name) != kind]


def build_net(kind: str | None, hidden: Sequence[int] | None, factory: FactoryRef | None,
              n_features: int, n_outputs: int = N_CLASSES) -> nn.Module:
    """The run's model for `n_features` inputs and the task's `n_outputs` (ppmlops.spec.Label.
    n_outputs): the factory's when there is one, else the built-in."""
    if factory is not None:
        return build_own(factory, n_features, n_outputs)[0]
    return build_model(kind, n_features, list(hidden or ()), n_outputs=n_outputs)


def job_net(job, width: int, features: int | None = None) -> nn.Module:
    """The run's model for a worker (a WorkerJob): built for `width` inputs, then its pretrained
    weights and frozen parameters (job.pretrained, job.trainable). `features`: the real feature
    columns when the run widened the canaries' layer (their columns keep the builder's weights)."""
    net = build_net(job.model_kind, job.hidden, job.factory, width, job.n_outputs)
    if job.pretrained or job.trainable:
        layer = job.canaries.layer if getattr(job, "canaries", None) is not None else None
        widened = {f"{layer}.weight": features} if layer and features is not None and features < width else None
        pretrained(net, job.pretrained, job.trainable, widened=widened)
    return net


def read_state(path: str) -> tuple[dict, str]:
    """(the tensors of a pretrained-weights file, the file's sha256). The file is a state dict
    saved with torch.save, or a file with one under "state_dict" (a model a ppmlops run saved);
    read with weights_only=True, so it can hold tensors and plain containers but no code."""
    import torch

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ModelError(f"model.init {path}: pretrained weights file not found") from None
    except OSError as err:
        raise ModelError(f"model.init {path}: cannot read the file: {err.strerror or err}") from None
    try:
        import io

        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a file it cannot read
        raise ModelError(f"model.init {path}: not a file of weights torch.load(weights_only=True) can read "
                         f"({type(err).__name__})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.init {path}: expected a state dict (parameter names to tensors), "
                         f"got a {type(loaded).__name__}")
    return state, hashlib.sha256(data).hexdigest()


def pretrained(net: nn.Module, path: str | None, trainable: Sequence[str] | None, *,
               widened: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Load `path`'s weights into `net` and freeze every parameter no `trainable` prefix names
    (a prefix names a parameter equal to it or under it: "head" names head.weight and head.bias).
    Every tensor of the file must be one the model has, of its shape; the model's tensors the file
    lacks keep the builder's initialisation. `widened`: a weight name and the columns the file's
    copy fills, when the run widened that layer's input (the canary audit's zero columns keep their
    initialisation). Returns what was done (public: names and counts from the file and the spec)."""
    import torch

    loaded, kept, sha = [], [], None
    if path:
        state, sha = read_state(path)
        own = net.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise ModelError(f"model.init {path}: {len(unknown)} tensor(s) the model does not have, e.g. "
                             f"{unknown[:3]} (the model's: {sorted(own)[:6]}...)")
        widened = dict(widened or {})
        with torch.no_grad():
            for name, tensor in state.items():
                mine = own[name]
                cols = widened.get(name)
                if tuple(tensor.shape) == tuple(mine.shape):
                    mine.copy_(tensor.to(mine.dtype))
                elif cols is not None and tensor.dim() == 2 and tuple(tensor.shape) == (mine.shape[0], cols):
                    mine[:, :cols].copy_(tensor.to(mine.dtype))
                else:
                    raise ModelError(f"model.init {path}: tensor {name!r} has shape {tuple(tensor.shape)}, the "
                                     f"model's has {tuple(mine.shape)}")
        loaded, kept = sorted(state), sorted(set(own) - set(state))
    names = [n for n, _ in net.named_parameters()]
    if trainable:
        unmatched = [t for t in trainable if not any(_names(n, t) for n in names)]
        if unmatched:
            raise ModelError(f"model.trainable: {unmatched} name(s) no parameter of the model (its parameters: "
                             f"{names[:8]}{'...' if len(names) > 8 else ''})")
        for n, p in net.named_parameters():
            p.requires_grad_(any(_names(n, t) for t in trainable))
    train = [n for n, p in net.named_parameters() if p.requires_grad]
    frozen = [n for n, p in net.named_parameters() if not p.requires_grad]
    return {"init": path, "sha256": sha, "loaded": loaded, "kept": kept, "trainable": train, "frozen": frozen,
            "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "frozen_parameters": sum(p.numel() for p in net.parameters() if not p.requires_grad)}


def _names(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def code_of(target: str) -> ModelCode:
    """The factory module's version: its file's sha256 and, when an installed distribution provides
    its top-level package, that distribution and its version."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    module_name = target.partition(":")[0]
    module = importlib.import_module(module_name)
    path = getattr(module, "__file__", None)
    sha = None
    if path:
        with open(path, "rb") as fh:
            sha = hashlib.sha256(fh.read()).hexdigest()
    found = packages_distributions().get(module_name.split(".")[0]) or []
    dist = sorted(found)[0] if found else None
    try:
        ver = version(dist) if dist else None
    except PackageNotFoundError:
        ver = None
    return ModelCode(module=module_name, sha256=sha, distribution=dist, version=ver)


def saved_model(state_dict: dict, kind: str | None, hidden: Sequence[int] | None, features: list[str],
                factory: FactoryRef | None, code: ModelCode | None, task: str = "binary",
                n_outputs: int = N_CLASSES) -> dict:
    """The model file a run leaves (read by evaluate and by the served model): the weights and
    everything `rebuild` needs, in types torch.load(weights_only=True) reads. A binary model's
    file is as it always was (a file without `task` is binary)."""
    out = {"state_dict": state_dict, "kind": kind, "hidden": list(hidden) if hidden is not None else None,
           "features": list(features), "factory": factory.model_dump(mode="json") if factory else None,
           "code": code.model_dump(mode="json") if code else None}
    if task != "binary":
        out |= {"task": task, "n_outputs": int(n_outputs)}
    return out


def rebuild(saved: Mapping[str, Any], n_features: int) -> nn.Module:
    """The trained model from its saved file (`saved_model`), weights loaded."""
    ref = saved.get("factory")
    if ref:
        ref = FactoryRef.model_validate(ref)
        _warn_if_changed(ref, saved.get("code"))
    net = build_net(saved.get("kind"), saved.get("hidden"), ref or None, n_features,
                    int(saved.get("n_outputs", N_CLASSES)))
    net.load_state_dict(saved["state_dict"])
    return net


def _warn_if_changed(ref: FactoryRef, code: Mapping[str, Any] | None) -> None:
    """A module edited since training may build the same shapes with another forward: loading
    succeeds, so say so (a package upgrade does this too, which is why it is not refused)."""
    if not code or not code.get("sha256"):
        return
    now = code_of(ref.target)
    if now.sha256 != code["sha256"]:
        log.warning("model.factory %r: module %s has changed since the model was trained (sha256 %s then, %s "
                    "now); its predictions may differ from the ones the run evaluated", ref.target, now.module,
                    code["sha256"][:12], (now.sha256 or "none")[:12])
