"""ingest: consent filter, quarantine with reasons, content-hashed snapshot (all in private/).

With privacy blocks, ingest first asks the ledger which blocks of the run's window can still afford
a run (`open_blocks`, public facts only: the calendar, the spec, the ledger's charges); the others
are retired for this run, named in the public Staged record, and their rows quarantined and kept
out of every release. A run whose every block is retired is refused here, before anything is read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ppmlops.data import ray_ingest, read_progress
from ppmlops.data.ingest import ingest
from ppmlops.errors import BudgetExceeded, PpmlopsError
from ppmlops.privacy.accountant import Segment, calibrate_noise, segment_rdp
from ppmlops.privacy.blocks import ALL, BlockError, calendar_of
from ppmlops.privacy.ledger import HOLDOUT, TRAIN, Ledger
from ppmlops.privacy.lifetime import LifetimeBudget, typical_run_curve
from ppmlops.privacy.split import DEFAULT_RULE
from ppmlops.window import DataInterval
from ppmlops.data.lineage import fingerprint
from ppmlops.risk.screen import DirectIdentifierScreen
from ppmlops.run.context import ReplayableRandomness, RunContext
from ppmlops.run.records import Refusal, RetiredBlock, SourceQuery, Staged, StagedData
from ppmlops.run.store import RunStore
from ppmlops.stages.context import timed
from ppmlops.stages.refusal import refuses

log = logging.getLogger(__name__)


def earlier_runs(ctx: RunContext) -> list[Path]:
    """The private folders of this pipeline's other runs on the same dataset (quarantine retention)."""
    out = []
    for folder in sorted(ctx.store.root.parent.iterdir()):
        if folder == ctx.store.root or not folder.is_dir():
            continue
        try:
            staged = RunStore(folder).read_optional(StagedData)
        except PpmlopsError:
            continue  # not a run folder this version wrote
        if staged is not None and staged.result.dataset_id == ctx.spec.dataset.id:
            out.append(RunStore(folder).private_dir)
    return out


def run_need(budget: LifetimeBudget, ctx: RunContext) -> dict[str, float]:
    """Per partition, the RDP at the dataset's order that a block must still hold to serve a run of
    this spec (public: the spec, the form's cap, the dataset's order). A run's whole curve (its
    count release and its grant) is sized to the partition's target epsilon; it is estimated as a
    Gaussian mechanism at that epsilon, or, with a declared dataset.expected_rows, as the typical
    run's subsampled curve plus the count release when that is more. Retirement is a scheduling
    rule only: whatever it decides, the ledger's per-block filter admits or refuses every charge."""
    spec, p = ctx.spec, ctx.spec.privacy
    target = min(p.run_epsilon, ctx.params.epsilon_cap)

    def gaussian(epsilon: float) -> float:
        return float(segment_rdp(Segment(calibrate_noise(epsilon, p.delta, 1.0, 1), 1.0, 1))[budget.index])

    need = {TRAIN: gaussian(target), HOLDOUT: gaussian(p.holdout_epsilon)}
    if spec.dataset.expected_rows:
        curve = typical_run_curve(target, p.delta, spec.dataset.expected_rows, spec.training.batch_size,
                                  ctx.params.epochs)
        need[TRAIN] = max(need[TRAIN], gaussian(p.stats_epsilon) + float(curve[budget.index]))
    return need


def open_blocks(ctx: RunContext, ledger: Ledger) -> tuple[list[str], list[RetiredBlock]]:
    """The privacy blocks the run reads and the ones of its window it retires (see the module)."""
    spec = ctx.spec
    calendar = calendar_of(spec.privacy)
    if not calendar.blocked:
        return [ALL], []
    selected = (ctx.interval or DataInterval.until_now()).with_lookback(spec.dataset.window.lookback)
    try:
        touched = calendar.touching(selected.start, selected.end)
    except BlockError as err:
        raise PpmlopsError(f"run {ctx.run_id!r} on dataset {spec.dataset.id!r}: {err}") from None
    if ledger.budget(spec.dataset.id) is None:
        return list(touched), []  # not registered yet: nothing charged, every block has its budget
    from ppmlops.stages.assess import register

    budget = register(ctx, ledger)  # refuses a spec whose budget or blocks differ from the registered ones
    need = run_need(budget, ctx)
    per_block = ledger.block_curves(spec.dataset.id, touched)
    kept, retired = [], []
    for block in touched:
        spent = {p: float(per_block[block][p][budget.index]) if p in per_block[block] else 0.0 for p in (TRAIN, HOLDOUT)}
        short = [p for p in (TRAIN, HOLDOUT) if not spent[p] + need[p] <= budget.rdp]
        if not short:
            kept.append(block)
            continue
        start, end = calendar.bounds(block)
        used = {p: spent[p] / budget.rdp for p in short}
        retired.append(RetiredBlock(block=block, start=start.isoformat(), end=end.isoformat(), why=(
            "cannot afford a run: " + ", ".join(f"{p} rows {u:.1%} of the block's budget used" for p, u in used.items()))))
    return kept, retired


def stage_source(ctx: RunContext, retired: list[str], split_rule: str):
    """ingest, on the Ray cluster (ppmlops.data.ray_ingest) when one is configured and
    PPMLOPS_RAY_INGEST is not off, for the sources it can read in parts; in this process else."""
    given = dict(earlier=earlier_runs(ctx), interval=ctx.interval, home=ctx.settings.home,
                 screen=DirectIdentifierScreen(), retired=retired, split_rule=split_rule)
    address = ctx.settings.ray_address
    if address and ctx.settings.ray_ingest:
        why = ray_ingest.local_reason(ctx.spec)
        if why is None:
            return ray_ingest.ingest_on_cluster(ctx.spec, ctx.store.private_dir, address, **given)
        log.info("ingest: read in this process, not on the Ray cluster: %s", why)
    return ingest(ctx.spec, ctx.store.private_dir, connections=ctx.settings.source_urls, **given)


@timed
def run(ctx: RunContext) -> Staged:
    try:
        ctx.check_randomness()  # before anything is read: a replayable run must release nothing
    except ReplayableRandomness as err:
        ctx.store.write(Refusal(stage="ingest", reasons=[str(err)]))
        raise
    ledger = Ledger(ctx.settings.db_url)
    try:
        blocks, retired = open_blocks(ctx, ledger)
        if not blocks:
            raise BudgetExceeded(
                f"run {ctx.run_id!r} on dataset {ctx.spec.dataset.id!r}: every privacy block of its window is "
                f"retired ({', '.join(r.block + ' ' + r.why for r in retired)}); the run would have no rows. "
                "New blocks get fresh budget as data arrives")
    except PpmlopsError as err:
        if refuses(err):
            ctx.store.write(Refusal(stage="ingest", reasons=[str(err)]))
        raise
    # A registered dataset keeps the split rule it was registered with (ppmlops.privacy.split);
    # a new one gets the default, which assess records when it registers the dataset.
    split_rule = ledger.split_rule(ctx.spec.dataset.id) or DEFAULT_RULE
    # The task log says how much of the source is read (a share and the time, never a row count).
    with read_progress.in_task_log("ingest: reading the source"):
        result = stage_source(ctx, [r.block for r in retired], split_rule)
    ctx.store.write(StagedData(result=result))
    return Staged(data_fingerprint=fingerprint(ctx.settings.home, result.sha256), columns=result.columns,
                  sources=[str(s["path"]) for s in result.sources], split=result.split,
                  consent_as_of=result.consent_as_of, window=result.window, blocks=blocks, retired_blocks=retired,
                  queries=[SourceQuery.model_validate({k: s[k] for k in SourceQuery.model_fields if k in s})
                           for s in result.sources if s.get("format") == "sql"])
