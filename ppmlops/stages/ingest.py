"""ingest: consent filter, quarantine with reasons, content-hashed snapshot (all in private/)."""

from __future__ import annotations

from pathlib import Path

from ppmlops.data.ingest import ingest
from ppmlops.errors import PpmlopsError
from ppmlops.data.lineage import fingerprint
from ppmlops.risk.screen import DirectIdentifierScreen
from ppmlops.run.context import ReplayableRandomness
from ppmlops.run.records import Refusal, Staged, StagedData
from ppmlops.run.store import RunStore
from ppmlops.stages.context import RunContext, timed


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


@timed
def run(ctx: RunContext) -> Staged:
    try:
        ctx.check_randomness()  # before anything is read: a replayable run must release nothing
    except ReplayableRandomness as err:
        ctx.store.write(Refusal(stage="ingest", reasons=[str(err)]))
        raise
    result = ingest(ctx.spec, ctx.store.private_dir, earlier=earlier_runs(ctx), interval=ctx.interval,
                    home=ctx.settings.home, screen=DirectIdentifierScreen())
    ctx.store.write(StagedData(result=result))
    return Staged(data_fingerprint=fingerprint(ctx.settings.home, result.sha256), columns=result.columns,
                  sources=[str(s["path"]) for s in result.sources], split=result.split,
                  consent_as_of=result.consent_as_of, window=result.window)
