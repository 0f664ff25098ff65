"""validate: the dataset's Great Expectations suite on the staged snapshot; a failure stops the run.

GX's result (with counts, observed values and masked examples) is written to private/; the
failure message and the public record name expectations and columns only.
"""

from __future__ import annotations

from ppmlops.data.validate import validate
from ppmlops.run.logs import library_logs
from ppmlops.run.records import StagedData, Validated
from ppmlops.run.context import RunContext
from ppmlops.stages.context import timed


@timed
def run(ctx: RunContext) -> Validated:
    staged = ctx.store.read(StagedData).result
    suite = ctx.spec.suite_path(ctx.settings.project_root)
    with library_logs(ctx.store.private_dir, "gx"):
        summary = validate([staged.snapshot_train, staged.snapshot_test], suite, ctx.store.private_dir)
    return Validated(suite=summary["suite"], suite_path=summary["suite_path"], evaluated=summary["evaluated"],
                     great_expectations_version=summary["great_expectations_version"])
