"""The spec's own model (model.factory), checked before the run spends anything (assess calls
`checked` ahead of its pre-check and its noisy counts).

The model is built once on CPU from the spec alone and run on public inputs only: a batch of zeros
and draws from a fixed seed, never a row. It is refused (ModelError naming the factory and the
layer) when:

* the factory cannot be imported or called, or returns something that is not an nn.Module;
* a layer mixes rows: BatchNorm (replaced by GroupNorm with `model.fix_batchnorm: true`), a layer
  Opacus's ModuleValidator refuses, a trainable layer with buffers, or any code that makes one
  row's output depend on another row's input (found with autograd on a probe batch);
* its output for a (2, n_features) batch is not (2, n_outputs) logits;
* the clipping path it would train with (ppmlops.training.clipping: the closed form for a
  Sequential of Linear layers and row-wise activations, else Opacus's ghost clipping) gives
  per-row gradient norms that differ from autograd's row by row.

It also places the canary audit (ppmlops.audit.canary), conservatively: the canaries live on the
weight of the first nn.Linear taking the raw features, and only when that layer is called once per
forward on exactly the model's input, its weight is not shared, and widening the input changes
that weight's shape alone (the canary columns are extra zero inputs, cut off after training).
Otherwise the run has no canaries and the card says why: an audit of 0 canaries, no bound.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ppmlops.errors import ModelError
from ppmlops.run.context import RunContext
from ppmlops.run.records import ModelCheck, Pretrained
from ppmlops.spec import FactoryRef
from ppmlops.training.canary_scores import weight_key
from ppmlops.training.clipping import probe_norms, resolve_mode
from ppmlops.training.factory import build_own, code_of
from ppmlops.training.models import N_CLASSES
from ppmlops.training.tasks import loss_sum

PROBE_ROWS = 4  # rows of the seeded probe batches (public: drawn from a fixed seed, no data)
WIDER = 3  # extra input columns the canary check builds the model with
NO_CANARIES = "the canary audit runs without canaries (an audit of 0 canaries gives no bound)"


def checked(ctx: RunContext) -> ModelCheck | None:
    """The run's check (made once, kept in the run folder); None for a built-in model."""
    from ppmlops.data.features import feature_names

    ref = ctx.spec.model.own
    if ref is None:
        return None
    kept = ctx.store.read_optional(ModelCheck)
    trainable = ctx.spec.model.trainable
    if kept is not None and (kept.factory, kept.args, kept.fix_batchnorm, kept.trainable) == (
            ref.target, ref.args, ref.fix_batchnorm, trainable):
        return kept
    label = ctx.spec.dataset.label
    return ctx.store.write(check(ref, len(feature_names(ctx.spec)), label.n_outputs, label.task, trainable))


def check_pretrained(ctx: RunContext) -> Pretrained | None:
    """model.init and model.trainable applied to the run's model on public inputs (the file read,
    every tensor's name and shape matched, the prefixes resolved); None when the spec sets
    neither. ModelError naming the file or the prefix otherwise, before anything is charged."""
    from ppmlops.data.features import feature_names
    from ppmlops.training.factory import build_net, pretrained

    model, label = ctx.spec.model, ctx.spec.dataset.label
    if model.init is None and not model.trainable:
        return None
    init = model.init_path()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_net(model.kind, model.hidden, model.own, len(feature_names(ctx.spec)), label.n_outputs)
        done = pretrained(net, str(init) if init else None, model.trainable)
    return ctx.store.write(Pretrained(**{**done, "init": model.init}))


def check(ref: FactoryRef, n_features: int, n_outputs: int = N_CLASSES, task: str = "binary",
          trainable: list[str] | None = None) -> ModelCheck:
    """Build and check the factory's model (with only `trainable`'s parameters trainable, as the
    run will have it); ModelError naming the factory and the layer if refused."""
    # The checks draw initial weights and probes from torch's generator: the caller's stream is kept.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net, replaced = build_own(ref, n_features, n_outputs)
        if trainable:
            from ppmlops.training.factory import pretrained

            pretrained(net, None, trainable)
        try:
            mode, n_trainable = _check_model(ref, net, n_features, n_outputs, task)
        except ModelError as err:
            if replaced:  # the model that failed is not the one the factory wrote: say so
                raise ModelError(f"{err} (model.fix_batchnorm replaced {', '.join(replaced)} first)") from None
            raise
        layer, units, note = canary_layer(ref, net, n_features, n_outputs)
    return ModelCheck(factory=ref.target, args=dict(ref.args), fix_batchnorm=ref.fix_batchnorm, n_features=n_features,
                      n_outputs=n_outputs, parameters=n_trainable, code=code_of(ref.target), clipping=mode,
                      replaced=replaced, canary_layer=layer, canary_units=units, canary_note=note,
                      trainable=trainable)


def _check_model(ref: FactoryRef, net: nn.Module, n_features: int, n_outputs: int,
                 task: str = "binary") -> tuple[str, int]:
    """(the clipping path, the trainable parameters) of a model that passes every check."""
    net.train()
    _check_layers(ref, net)
    _check_output(ref, net, n_features, n_outputs)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    if not trainable:
        raise ModelError(f"model.factory {ref.target!r}: the model has no trainable parameters")
    _check_rows_independent(ref, net, n_features)
    mode = resolve_mode("auto", net)
    _check_clipping(ref, net, mode, n_features, n_outputs, task)
    return mode, trainable


def _refuse(ref: FactoryRef, problems: list[str]) -> None:
    if problems:
        raise ModelError(f"model.factory {ref.target!r} cannot train with DP-SGD: " + "; ".join(problems))


def _first_sentence(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text.split(". ")[0].rstrip(".")


def _check_layers(ref: FactoryRef, net: nn.Module) -> None:
    """Layers that mix rows or that Opacus cannot give per-row gradients, each named."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    problems = []
    # Opacus's fixer replaces only BatchNorm layers with parameters: one without them is still here.
    fix = ("model.fix_batchnorm could not replace it (Opacus replaces BatchNorm layers with affine parameters "
           "only)" if ref.fix_batchnorm else "or set model.fix_batchnorm: true to have it replaced by GroupNorm")
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            problems.append(f"layer {name!r} ({type(m).__name__}) mixes rows: its batch statistics make each row's "
                            "output depend on the other rows, so clipping a row's own gradient no longer bounds its "
                            f"influence; use nn.GroupNorm (or nn.LayerNorm) instead, {fix}")
    for name, m in trainable_modules(net):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        validator = ModuleValidator.VALIDATORS.get(type(m))
        problems += [f"layer {name!r} ({type(m).__name__}): {_first_sentence(e)}" for e in (validator(m) if validator else [])]
        buffers = [b for b, _ in m.named_buffers(recurse=False)]
        if buffers:
            problems.append(f"layer {name!r} ({type(m).__name__}) has trainable parameters and buffers {buffers}: "
                            "Opacus gives no per-row gradients for it, and buffers updated in training are not private")
    if not problems:  # the whole-model verdict, for what no single layer shows
        problems = [f"Opacus's ModuleValidator: {_first_sentence(e)}" for e in ModuleValidator.validate(net, strict=False)]
    _refuse(ref, problems)


def _forward_failed(ref: FactoryRef, err: Exception, batch: str) -> ModelError:
    return ModelError(f"model.factory {ref.target!r}: the model's forward raised {type(err).__name__}: "
                      f"{_first_sentence(err)} on {batch} (Poisson sampling draws batches of any size, one row "
                      "included; n_features is the encoded feature count)")


def _check_output(ref: FactoryRef, net: nn.Module, n_features: int, n_outputs: int) -> None:
    try:
        out = net(torch.zeros(2, n_features))
    except Exception as err:  # noqa: BLE001 - the model's own error, named as the model's
        raise _forward_failed(ref, err, f"a (2, {n_features}) batch of zeros") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, n_outputs) or not out.is_floating_point():
        raise ModelError(f"model.factory {ref.target!r}: the model maps a (2, {n_features}) batch to {shape}"
                         f"{'' if not isinstance(out, torch.Tensor) else ' ' + str(out.dtype)}; ppmlops needs "
                         f"(2, {n_outputs}) floating-point logits, one per class per row")


def _probe(n_features: int, seed: int) -> torch.Tensor:
    return torch.randn(PROBE_ROWS, n_features, generator=torch.Generator().manual_seed(seed))


def _mixes(out: torch.Tensor, X: torch.Tensor) -> bool:
    """Whether row 0 of `out` depends on any other row of X (autograd: d out[0] / d X[1:] != 0)."""
    if not out.requires_grad:
        return False
    (grad,) = torch.autograd.grad(out[0].sum(), X, retain_graph=True, allow_unused=True)
    return grad is not None and bool(grad[1:].abs().sum() > 0)


def _check_rows_independent(ref: FactoryRef, net: nn.Module, n_features: int) -> None:
    """Any code that mixes rows, layer or not; the first layer whose output shows it is named."""
    X = _probe(n_features, 1).requires_grad_(True)
    seen: list[tuple[str, nn.Module, object]] = []  # each layer's output, in the order layers finish
    hooks = [m.register_forward_hook(lambda m, _i, o, name=name: seen.append((name, m, o)))
             for name, m in net.named_modules() if name]
    try:
        out = net(X)
    except Exception as err:  # noqa: BLE001 - the model's own error, named as the model's
        raise _forward_failed(ref, err, f"a seeded ({PROBE_ROWS}, {n_features}) probe batch") from None
    finally:
        for h in hooks:
            h.remove()
    if not _mixes(out, X):
        return
    where = ""
    for name, m, o in seen:
        if isinstance(o, torch.Tensor) and o.dim() and o.shape[0] == PROBE_ROWS and _mixes(o, X):
            where = f", first at the output of layer {name!r} ({type(m).__name__}): it, or the code feeding it, mixes rows"
            break
    _refuse(ref, [f"row 0's output depends on the other rows of the batch{where}. DP-SGD bounds one row's "
                  "influence by clipping that row's own gradient, which batch statistics or any operation across "
                  "the batch dimension breaks"])


def _row_norms(net: nn.Module, X: torch.Tensor, y: torch.Tensor, task: str = "binary") -> torch.Tensor:
    """Each row's gradient norm by plain autograd, one row at a time: the definition."""
    params = [p for p in net.parameters() if p.requires_grad]
    norms = []
    for i in range(len(y)):
        loss = loss_sum(task, net(X[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        norms.append(torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.tensor(0.0))))
    return torch.stack(norms)


def _check_clipping(ref: FactoryRef, net: nn.Module, mode: str, n_features: int, n_outputs: int,
                    task: str = "binary") -> None:
    """The clipping path the run will take gives every row's own gradient norm."""
    X, y = _probe(n_features, 2), torch.arange(PROBE_ROWS) % n_outputs
    if task == "regression":  # targets in [0, 1], as the encoded label
        y = (torch.arange(PROBE_ROWS, dtype=torch.float32) + 1) / (PROBE_ROWS + 1)
    # Row by row and batched, dropout would draw different masks: compared without it. Opacus
    # hooks only layers in training mode, so the rest of the model stays in it.
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    try:
        want = _row_norms(net, X, y, task)
    except Exception as err:  # noqa: BLE001 - the model's own error, named as the model's
        raise _forward_failed(ref, err, f"one row of a seeded probe batch, shape (1, {n_features})") from None
    try:
        got = probe_norms(copy.deepcopy(net), mode, X, y, task).detach()
    except Exception as err:  # noqa: BLE001 - Opacus's error, named with the path that raised it
        raise ModelError(f"model.factory {ref.target!r}: the {mode} clipping path cannot run on the model "
                         f"({type(err).__name__}: {_first_sentence(err)})") from None
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-5):
        raise ModelError(f"model.factory {ref.target!r}: the {mode} clipping path's per-row gradient norms "
                         f"{[round(float(v), 5) for v in got.flatten()]} differ from autograd's "
                         f"{[round(float(v), 5) for v in want]} on a public probe batch: Opacus does not compute "
                         "this model's per-row gradients (a parameter used outside its own layer, or a layer it "
                         "does not support), or the forward pass is random outside nn.Dropout layers")


def canary_layer(ref: FactoryRef, net: nn.Module, n_features: int, n_outputs: int) -> tuple[str | None, int, str]:
    """(layer name, its units, the card's note): where the gradient canaries live, or (None, 0, why not)."""
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear) and m.in_features == n_features]
    if not found:
        return None, 0, f"no nn.Linear takes the {n_features} features directly: {NO_CANARIES}"
    name = found[0][0]
    if not found[0][1].weight.requires_grad:
        return None, 0, f"layer {name!r} on the {n_features} features is frozen (model.trainable): {NO_CANARIES}"
    why = _canary_unsafe(ref, net, name, n_features, n_outputs)
    if why:
        return None, 0, f"layer {name!r} cannot carry the canaries ({why}): {NO_CANARIES}"
    units = found[0][1].out_features
    return name, units, (f"gradient canaries on the weight of layer {name!r} (an nn.Linear on the {n_features} "
                         f"features, {units} units), in extra input columns that are zero on every real row")


def _canary_unsafe(ref: FactoryRef, net: nn.Module, name: str, n_features: int, n_outputs: int) -> str:
    """Why the canaries cannot sit on `name`'s weight ('' if they can). They may only if no real
    row's gradient reaches their coordinates, and if cutting their columns off leaves the model."""
    wide, _ = build_own(ref, n_features + WIDER, n_outputs)
    narrow_shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    wide_shapes = {k: tuple(v.shape) for k, v in wide.state_dict().items()}
    key = weight_key(name)
    expected = dict(narrow_shapes, **{key: (narrow_shapes[key][0], n_features + WIDER)})
    if wide_shapes != expected:
        return "widening the input changes other parameters than its weight"
    layer = wide.get_submodule(name)
    if sum(1 for _, p in wide.named_parameters(remove_duplicate=False) if p is layer.weight) != 1:
        return "its weight is shared with another layer"
    X = _probe(n_features + WIDER, 3)
    inputs: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, i, _o: inputs.append(i[0].detach() if i else None))
    try:
        with torch.no_grad():
            wide(X)
    finally:
        hook.remove()
    if len(inputs) != 1:
        return f"it runs {len(inputs)} times in one forward pass"
    if inputs[0] is None or inputs[0].shape != X.shape or not torch.equal(inputs[0], X):
        return "its input is not the model's input as it is (the features pass through other code first)"
    return ""
