"""Mutations a gate must not survive: apply each in turn, run the unit tests that cover it, report.

    .venv/bin/python tests/mutations.py                          # every mutation (a few minutes)
    .venv/bin/python tests/mutations.py "deploy guard removed"   # one, by name

Each mutation is a one-line edit that would let a gate fail open or a check go quiet (issue 14,
item 10). The source is restored after each run, whatever happens. Exit status 1 if any mutation
survives its tests or no longer applies (the code moved: update the mutation).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_GUARDS = "tests/unit/test_stage_guards.py"
PRIVACY_NOISE = "tests/unit/test_privacy_noise.py"
TENSORS = "tests/unit/test_tensor_inputs.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation("deploy guard removed", "ppmlops/stages/deploy.py",
             "    if not deployable(gate, approval):", "    if False:", (STAGE_GUARDS,)),
    Mutation("approved with or", "ppmlops/stages/deploy.py",
             'approved = gate.outcome == "needs_approval" and approval is not None',
             'approved = gate.outcome == "needs_approval" or approval is not None', (STAGE_GUARDS,)),
    Mutation("needs-approval branches to deploy", "ppmlops/stages/gate.py",
             'return "approve" if decision.outcome == "needs_approval"',
             'return "deploy" if decision.outcome == "needs_approval"', (STAGE_GUARDS,)),
    Mutation("train gate ignores a deny with an engine error", "ppmlops/stages/plan.py",
             "    if not train.allowed:\n", "    if not train.allowed and train.error is None:\n", (STAGE_GUARDS,)),
    Mutation("only allowed decisions audited", "ppmlops/stages/decide.py",
             "    AuditLog(ctx.settings.db_url).record(", "    if decision.allowed: AuditLog(ctx.settings.db_url).record(",
             (STAGE_GUARDS, "tests/unit/test_audit_log.py")),
    Mutation("chain hash ignores prev_hash", "ppmlops/audit/log.py",
             "hashlib.sha256((prev_hash + record_json).encode(", "hashlib.sha256((record_json).encode(",
             ("tests/unit/test_audit_log.py",)),
    Mutation("anchor mismatch not reported", "ppmlops/audit/log.py",
             "    elif anchored.hash != head.hash:", "    elif False:", ("tests/unit/test_audit_log.py",)),
    Mutation("class of exactly k unsafe", "ppmlops/risk/kanon.py",
             "rows_below_k=int(counts[counts < k].sum()), classes_below_k=int((counts < k).sum()),",
             "rows_below_k=int(counts[counts <= k].sum()), classes_below_k=int((counts <= k).sum()),",
             ("tests/unit/test_risk_scan.py",)),
    Mutation("epsilon may be 0", "ppmlops/spec.py", "    epsilon: float = Field(gt=0, le=100)",
             "    epsilon: float = Field(ge=0, le=100)", ("tests/unit/test_spec.py",)),
    Mutation("delta may be 1", "ppmlops/spec.py", "    delta: float = Field(gt=0, lt=1)",
             "    delta: float = Field(gt=0, le=1)", ("tests/unit/test_spec.py",)),
    Mutation("test_fraction may be 0 or 1", "ppmlops/spec.py", "    test_fraction: float = Field(0.2, gt=0, lt=1)",
             "    test_fraction: float = Field(0.2, ge=0, le=1)", ("tests/unit/test_spec.py",)),
    Mutation("range low == high", "ppmlops/spec.py", "        if not v[0] < v[1]:", "        if not v[0] <= v[1]:",
             ("tests/unit/test_spec.py",)),
    Mutation("held-out validation ignored", "ppmlops/stages/validate.py",
             "snapshots, private = [staged.snapshot_train, staged.snapshot_test], ctx.store.private_dir",
             "snapshots, private = [staged.snapshot_train], ctx.store.private_dir",
             (STAGE_GUARDS,)),
    # issue 26, item 4: the noise and the sampling must be what the ledger charges for.
    Mutation("discrete Gaussian sigma^2 rounded down", "ppmlops/privacy/randomness.py",
             "return Fraction(math.ceil(Fraction(sigma) ** 2 * _SIGMA2_GRID), _SIGMA2_GRID)",
             "return Fraction(math.floor(Fraction(sigma) ** 2 * _SIGMA2_GRID), _SIGMA2_GRID)", (PRIVACY_NOISE,)),
    Mutation("gradient noise halved", "ppmlops/training/private_model.py",
             "self.noise_source.gaussian_tensor(flat.numel(), self.noise_multiplier * self.max_grad_norm,",
             "self.noise_source.gaussian_tensor(flat.numel(), self.noise_multiplier * self.max_grad_norm / 2,",
             (PRIVACY_NOISE,)),
    # issue 28, item 5: the fused step must divide by the public divisor, and release a sum once.
    Mutation("fused step skips the divisor", "ppmlops/training/private_model.py",
             "flat.div_(self.expected_batch_size * self.accumulated_iterations)", "flat.div_(1.0)",
             ("tests/unit/test_clipping.py",)),
    Mutation("virtual steps keep only the last piece", "ppmlops/training/private_model.py",
             "total = grads if total is None else [t.add_(g) for t, g in zip(total, grads)]", "total = grads",
             ("tests/unit/test_clipping.py",)),
    Mutation("clipped sum released twice", "ppmlops/training/private_model.py",
             'if getattr(p.summed_grad, "_ppmlops_released", False):', "if False:",
             ("tests/unit/test_clipping.py",)),
    Mutation("Poisson sampling at 2q", "ppmlops/training/sampling.py",
             "source.poisson_subset(n, self.sample_rate)", "source.poisson_subset(n, 2 * self.sample_rate)",
             ("tests/unit/test_sampling_privacy.py",)),
    # issue 28: the fast paths must keep the law
    Mutation("subset size fixed at its mean", "ppmlops/privacy/randomness.py",
             "k = int(self._gen.binomial(n, p)) if n > 0 else 0", "k = round(n * p)",
             ("tests/unit/test_sampling_law.py",)),
    Mutation("noise sums overlapping draws", "ppmlops/privacy/cipher_noise.py",
             "np.add(c[:b], c[b:], out=out[lo:lo + b])",
             "np.add(c[:b], c[1:b + 1], out=out[lo:lo + b])", ("tests/unit/test_cipher_noise.py",)),
    Mutation("device noise sums overlapping draws", "ppmlops/privacy/cipher_noise.py",
             "torch.add(z[:rest], z[rest:], out=out[full * BLOCK:])",
             "torch.add(z[:rest], z[1:rest + 1], out=out[full * BLOCK:])", ("tests/unit/test_cipher_noise.py",)),
    Mutation("noise blocks reuse the first block's keystream", "ppmlops/privacy/cipher_noise.py",
             "        update_into(_zero_bytes(BYTES_PER_OUTPUT * b), kbuf)",
             "        lo or update_into(_zero_bytes(BYTES_PER_OUTPUT * b), kbuf)", ("tests/unit/test_cipher_noise.py",)),
    Mutation("religion name rule deleted", "ppmlops/risk/categories.py",
             '    ("religion", SPECIAL, r"(^|_)(religion|religious|faith|belief|beliefs|denomination)($|_)"),\n', "",
             ("tests/unit/test_risk_columns.py", "tests/unit/test_risk_scan.py")),
    Mutation("block admission skips a touched block", "ppmlops/privacy/ledger.py",
             "            for block in touched:\n                refusal = budget.refusal(",
             "            for block in list(touched)[1:]:\n                refusal = budget.refusal(",
             ("tests/unit/test_blocks.py",)),
    Mutation("one-pot entries count against no block", "ppmlops/privacy/ledger.py",
             "return calendar.existed_at(block, e.created_at) if _one_pot(e) else block in e.blocks",
             "return False if _one_pot(e) else block in e.blocks", ("tests/unit/test_blocks.py",)),
    Mutation("pipelines keep nothing for each other", "ppmlops/privacy/ledger.py",
             "below = [q for q in sharing if q != pipeline and dominant[q] <= dominant[pipeline]]",
             "below = []", ("tests/unit/test_block_unlock.py",)),
    Mutation("the poorer pipeline keeps off the richer one's part", "ppmlops/privacy/ledger.py",
             "dominant[q] <= dominant[pipeline]]", "True]", ("tests/unit/test_block_unlock.py",)),
    Mutation("a pipeline keeps another's whole unused part, not its ask", "ppmlops/privacy/ledger.py",
             "asks[q].get(p, math.inf)) for q in below)", "math.inf) for q in below)",
             ("tests/unit/test_block_unlock.py",)),
    Mutation("batched validation keeps only the first batch's counts", "ppmlops/data/validate.py",
             "out[k] = (a.get(k) or 0) + (b.get(k) or 0)", "out[k] = a.get(k) or 0",
             ("tests/unit/test_validate.py",)),
    Mutation("batched validation passes when a later batch fails", "ppmlops/data/validate.py",
             'm["success"] = bool(m["success"] and r["success"])', 'm["success"] = bool(m["success"])',
             ("tests/unit/test_validate.py",)),
    Mutation("the plan keeps its learnability estimate from the policy", "ppmlops/stages/plan.py",
             '**({"learnability": learn.model_dump()} if learn is not None else {})', "**{}",
             ("tests/unit/test_learnability.py",)),
    Mutation("linear clipping counts frozen layers in a row's norm", "ppmlops/training/clipping.py",
             "            if isinstance(layer, nn.Linear) and _trains(layer):",
             "            if isinstance(layer, nn.Linear) and (_trains(layer) or True):",
             ("tests/unit/test_finetune.py",)),
    Mutation("model.trainable freezes nothing", "ppmlops/training/factory.py",
             "            p.requires_grad_(any(_names(n, t) for t in trainable))", "            pass",
             ("tests/unit/test_finetune.py",)),
    Mutation("per-layer clipping clips the whole gradient", "ppmlops/training/clipping.py",
             "        if self.per_layer:\n", "        if False:\n", ("tests/unit/test_per_layer_clipping.py",)),
    Mutation("clipping norms rounded down (as bfloat16 norms may be)", "ppmlops/training/clipping.py",
             "            per.append(sq)", "            per.append(sq.to(torch.bfloat16).float() * 0.98)",
             ("tests/unit/test_mixed_precision.py",)),
    Mutation("block budget unlocked at once", "ppmlops/privacy/blocks.py",
             "    if not calendar.blocked or horizon is None or block == ALL:\n        return 1.0",
             "    if True:\n        return 1.0", ("tests/unit/test_block_unlock.py",)),
    Mutation("embedded MLflow store created without its lock", "ppmlops/registry/backend.py",
             "    with _creating_embedded_store(uri):", "    with contextlib.nullcontext():",
             ("tests/unit/test_mlflow_store_creation.py",)),
    Mutation("late scheduled runs not refused", "policies.rego",
             "\tlate > grace\n", "\tlate > grace * 1000000\n", ("tests/unit/test_precheck.py",)),
    Mutation("tensor encoding scales from the data's min and max", "ppmlops/data/tensors.py",
             "    lo, hi = f.range\n    return ((np.clip(rows, lo, hi)",
             "    lo, hi = rows.min(), rows.max()\n    return ((np.clip(rows, lo, hi)", (TENSORS,)),
    Mutation("a tensor of the wrong length is staged", "ppmlops/data/tensors.py",
             "    if count != f.size:\n        raise _Bad(", "    if False:\n        raise _Bad(", (TENSORS,)),
    Mutation("a non-finite tensor value is staged", "ppmlops/data/tensors.py",
             "    if not finite.all():\n", "    if False:\n", (TENSORS,)),
    Mutation("ingest ignores the dataset's registered split rule", "ppmlops/stages/ingest.py",
             "split_rule = ledger.split_rule(ctx.spec.dataset.id) or DEFAULT_RULE",
             "split_rule = DEFAULT_RULE", ("tests/unit/test_split_rules.py",)),
    Mutation("the ledger accepts another split rule", "ppmlops/privacy/ledger.py",
             "        if registered != rule:\n            raise SplitRuleMismatch(",
             "        if False:\n            raise SplitRuleMismatch(", ("tests/unit/test_split_rules.py",)),
    Mutation("a value hashes by its array's widest value", "ppmlops/risk/kanon.py",
             "            longer = lengths > 8 * j\n", "            longer = lengths >= 0\n",
             ("tests/unit/test_risk_scan.py",)),
    Mutation("a cluster part's lines counted from the wrong place", "ppmlops/data/ray_ingest.py",
             "    parts, line = [], header_lines + 1\n", "    parts, line = [], header_lines\n",
             ("tests/unit/test_ray_ingest_parts.py",)),
    Mutation("a number column is cast whole whatever its bytes", "ppmlops/data/ingest.py",
             "        if _DECIMAL_BYTE[np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]].all():\n",
             "        if True:\n", ("tests/unit/test_ingest_numbers.py",)),
    Mutation("pyarrow's float text taken with an exponent", "ppmlops/data/ingest.py",
             '                 & ~pc.match_substring(text, "e").to_numpy(zero_copy_only=False))\n',
             "                 )\n", ("tests/unit/test_ingest_numbers.py",)),
    Mutation("a refused row's cells after its MAC lose their comma", "ppmlops/data/quarantine.py",
             '            ("," if b + 1 < len(cells) else "") + ",".join(cells[b + 1:]))',
             '            "" + ",".join(cells[b + 1:]))', ("tests/unit/test_ingest_columns.py",)),
    Mutation("a category column is staged unstripped", "ppmlops/data/ingest.py",
             "        if pc.all(good).as_py() or not may_need_strip(text):\n", "        if True:\n",
             ("tests/unit/test_ingest_columns.py",)),
    Mutation("a ledger outage recorded as the run's refusal", "ppmlops/stages/refusal.py",
             "    return not (isinstance(err, DatabaseUnavailable) and err.transient)\n", "    return True\n",
             ("tests/unit/test_db_faults.py",)),
    Mutation("a blank line in a block goes unseen", "ppmlops/data/reading.py",
             "            if table.num_rows == n_lines:\n", "            if table.num_rows <= n_lines:\n",
             ("tests/unit/test_block_reader.py",)),
    Mutation("a block's hashes taken without its rows' filter", "ppmlops/data/reading.py",
             "        hashes = hashes if self.rows is None else hashes[np.asarray(self.rows, dtype=np.int64)]\n",
             "        hashes = hashes\n",
             ("tests/unit/test_split_accelerator.py",)),
    Mutation("a refusal's HMAC input taken from the next line", "ppmlops/data/reading.py",
             "        starts = np.where(i == 0, 0, self._ends[np.maximum(i - 1, 0)] + 1)\n",
             "        starts = np.where(i == 0, 0, self._ends[np.maximum(i, 0)] + 1)\n",
             ("tests/unit/test_split_accelerator.py",)),
    Mutation("a sliced text's offsets read from the buffer's start", "ppmlops/data/ingest.py",
             "    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset: text.offset + len(text) + 1]\n",
             "    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[: len(text) + 1]\n",
             ("tests/unit/test_ingest_columns.py",)),
    Mutation("the validation helper's error raised as another class", "ppmlops/stages/validate_helper.py",
             "    if isinstance(kind, type) and issubclass(kind, errors.PpmlopsError):\n", "    if False:\n",
             ("tests/unit/test_validate_helper.py",)),
)


def run(m: Mutation) -> str:
    source = ROOT / m.path
    text = source.read_text()
    if text.count(m.old) != 1:
        return f"NOT APPLIED: the line occurs {text.count(m.old)} times in {m.path}"
    source.write_text(text.replace(m.old, m.new))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        source.write_text(text)
    failed = [line.removeprefix("FAILED ").split(" - ")[0] for line in done.stdout.splitlines()
              if line.startswith("FAILED")]
    return f"caught by {failed[0]}" if done.returncode and failed else "SURVIVED"


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    results = []
    for m in chosen:
        results.append((m.name, run(m)))
        print(f"- {m.name}: {results[-1][1]}", flush=True)
    return 1 if any(not r.startswith("caught") for _, r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
