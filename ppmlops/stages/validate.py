"""validate: the dataset's Great Expectations suite on the staged snapshot; a failure stops the run.

GX's result (with counts, observed values and masked examples) is written to private/; the
failure message and the public record name expectations and columns only.
"""

from __future__ import annotations

import logging

from ppmlops.stages import validate_helper
from ppmlops.run.records import StagedData, Validated
from ppmlops.run.context import RunContext
from ppmlops.stages.context import timed

log = logging.getLogger(__name__)


@timed
def run(ctx: RunContext) -> Validated:
    staged = ctx.store.read(StagedData).result
    suite = ctx.spec.suite_path(ctx.settings.project_root)
    snapshots, private = [staged.snapshot_train, staged.snapshot_test], ctx.store.private_dir
    summary = None
    helper = validate_helper.take()
    if helper is not None:  # a whole DAG run in this process: GX was imported on another core
        try:
            summary = helper.validate(snapshots, suite, private)
        except validate_helper.HelperFailed as err:
            log.warning("%s; validating in this process", err)
    if summary is None:
        summary = validate_helper.validated(snapshots, suite, private)
    return Validated(suite=summary["suite"], suite_path=summary["suite_path"], evaluated=summary["evaluated"],
                     great_expectations_version=summary["great_expectations_version"])
