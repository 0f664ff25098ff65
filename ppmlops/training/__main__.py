"""Entrypoint of a Ray job that runs one pipeline's train stage: ``python -m ppmlops.training REQUEST``.

REQUEST is the JSON file `ppmlops.training.jobs` wrote in the run directory (the spec, the run
id and the run's params). The job trains as the Ray driver and writes the stage's record to the
run directory, where the submitting task reads it. Exit status 1 with the error on stderr when
training fails, so the job ends FAILED with that message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from ppmlops.errors import PpmlopsError
    from ppmlops.spec import PipelineSpec
    from ppmlops.run.context import RunContext, RunParams

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ppmlops.training REQUEST_JSON", file=sys.stderr)
        return 2
    try:
        request = json.loads(Path(args[0]).read_text())
        spec = PipelineSpec.model_validate(request["spec"])
        ctx = RunContext(spec, request["run_id"], RunParams(**request["params"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"ppmlops.training: cannot read the train request {args[0]!r}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    from ppmlops.training.driver import train_here
    from ppmlops.training.launch import shutdown_local_ray

    try:
        record = train_here(ctx)
    except PpmlopsError as e:
        print(f"ppmlops.training: {e}", file=sys.stderr)
        return 1
    finally:
        shutdown_local_ray()
    ctx.store.write(record)
    print(f"[run {ctx.run_id}] train record written to {ctx.store.path_of(type(record))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
