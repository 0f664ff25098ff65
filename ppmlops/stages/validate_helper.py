"""Great Expectations in a helper process, for a process that runs a whole DAG run by itself.

Airflow runs each task in its own process, so there the validate task imports GX itself. A whole
DAG run in one process (ppmlops.airflow.run_one: `./dev demo`, `python dags/ppmlops_retrain.py
PIPELINE`) instead forks this helper before the first task: it imports GX on the other core while
ingest runs, then waits. The validate task hands it the run's snapshots and suite, and while GX
validates there this process does what it was given to do meanwhile (run_one: the later tasks'
imports), so the two cores work at once instead of one after the other.

Forked, not started afresh: the child shares what the parent has loaded (pandas, pyarrow,
pydantic), so it imports only GX's own modules, not the libraries GX shares with the tasks. It is
forked before the parent has started any thread of its own, runs nothing of Airflow's, and leaves
through os._exit (multiprocessing's), so it closes nothing the parent holds.

The helper runs the very `validate` the task would run, with GX's log records redirected to the
same private file, and answers with its summary or its error, raised here as the same ppmlops
class with the same message: a failed expectation stops the run as it would in process. It serves
one validation and exits. When it cannot (it died, or answered something other than an answer),
the task says so in one line and validates in its own process, as Airflow's tasks always do:
nothing about the run depends on the helper.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from ppmlops import errors

log = logging.getLogger(__name__)

# Test-only: "die" makes the helper exit (status 3) when asked, "garbage" answer with something
# that is not an answer, so the tests see the task fall back on a real failing process.
FAULT_ENV = "PPMLOPS_VALIDATE_HELPER_FAULT"


class HelperFailed(Exception):
    """The helper could not answer (never a verdict on the data): validate in this process."""


class ValidationHelper:
    """A forked helper: `validate` once, or `close` it unused."""

    def __init__(self, meanwhile: Callable[[], None] | None = None) -> None:
        self.meanwhile = meanwhile
        self.owner = os.getpid()
        fork = multiprocessing.get_context("fork")
        self._conn, theirs = fork.Pipe()
        self.proc = fork.Process(target=_serve, args=(theirs,), name="ppmlops-validate-helper", daemon=True)
        try:
            self.proc.start()
        finally:
            theirs.close()

    def validate(self, snapshot_paths: Sequence[str | Path], suite_path: Path, private_dir: Path) -> dict[str, Any]:
        """`ppmlops.data.validate.validate(snapshot_paths, suite_path, private_dir)` run in the
        helper, GX's log records in `private_dir`'s logs as the task writes them; the summary, the
        same error as in process, or HelperFailed when the helper gave no answer."""
        request = {"snapshots": [str(p) for p in snapshot_paths], "suite": str(suite_path),
                   "private_dir": str(private_dir), "fault": os.environ.get(FAULT_ENV, "")}
        try:
            try:
                self._conn.send(request)
            except OSError:
                pass  # it died: its exit status says so, below
            if self.meanwhile is not None:
                try:
                    self.meanwhile()
                except Exception as err:  # a warm-up only: the task that needs it imports it again
                    log.debug("work meanwhile failed: %s", err)
            try:
                answer = self._conn.recv()
            except (EOFError, OSError):
                answer = None
        finally:
            self.close()
        if not _is_answer(answer):
            why = (f"exited with status {self.proc.exitcode}" if self.proc.exitcode
                   else "answered something other than an answer")
            raise HelperFailed(f"the validation helper process {why}")
        if answer["ok"]:
            return answer["summary"]
        raise _error(answer)

    def close(self, wait_s: float = 5.0) -> None:
        """Close the pipe; the helper, which ends by itself after its answer, is killed if still
        there after `wait_s` seconds (0: at once, for one that was never asked)."""
        self._conn.close()
        self.proc.join(timeout=wait_s)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()


def _is_answer(answer: Any) -> bool:
    return (isinstance(answer, dict) and isinstance(answer.get("ok"), bool)
            and (not answer["ok"] or isinstance(answer.get("summary"), dict)))


def _error(answer: dict[str, Any]) -> Exception:
    """The helper's error as the ppmlops class it was; any other as a RuntimeError naming it."""
    kind = getattr(errors, str(answer.get("error")), None)
    message = str(answer.get("message") or "")
    if isinstance(kind, type) and issubclass(kind, errors.PpmlopsError):
        try:
            return kind(message)
        except TypeError:  # a class made from more than a message (not one validate raises)
            pass
    return RuntimeError(f"validation failed in the helper process: {answer.get('error')}: {message}")


_started: ValidationHelper | None = None


def start(meanwhile: Callable[[], None] | None = None) -> None:
    """Fork this process's helper (run_one, before the first task and before any thread starts);
    `meanwhile` runs here while it validates. When it cannot start, the task validates in process."""
    global _started
    try:
        _started = ValidationHelper(meanwhile)
    except OSError as err:
        log.info("no validation helper process (%s): the validate task runs Great Expectations itself", err)


def take() -> ValidationHelper | None:
    """The helper this process started and has not used yet (one validation each)."""
    global _started
    helper, _started = _started, None
    if helper is not None and helper.owner != os.getpid():  # a forked child: its parent's pipe
        return None
    return helper


def stop() -> None:
    """Stop an unused helper (the run ended before validate)."""
    helper = take()
    if helper is not None:
        helper.close(wait_s=0)


def validated(snapshot_paths: Sequence[str | Path], suite_path: Path, private_dir: Path) -> dict[str, Any]:
    """The suite run on the snapshots as the validate task runs it, in this process: results in
    `private_dir`, GX's log records in its logs."""
    from ppmlops.data.validate import validate
    from ppmlops.run.logs import library_logs

    with library_logs(Path(private_dir), "gx"):
        return validate(snapshot_paths, Path(suite_path), Path(private_dir))


def _serve(conn) -> None:
    """The helper's body: GX imported first, then one request answered."""
    os.nice(10)  # the other core's spare time: the parent's tasks come first
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations  # noqa: F401  (the point of the helper: imported before it is asked)

    import ppmlops.data.validate  # noqa: F401

    try:
        request = conn.recv()
    except EOFError:  # closed unused
        return
    if request.get("fault") == "die":
        os._exit(3)
    if request.get("fault") == "garbage":
        conn.send("not an answer")
        return
    try:
        answer = {"ok": True, "summary": validated(request["snapshots"], request["suite"], request["private_dir"])}
    except Exception as err:  # every error goes back to the task, which raises it there
        answer = {"ok": False, "error": type(err).__name__, "message": str(err)}
    conn.send(answer)
