"""Errors a user can act on. Each names the file, row, field or component at fault."""


class PpmlopsError(Exception):
    """Base class: the message is meant for the person running the pipeline."""


class SpecError(PpmlopsError):
    """A pipeline spec is missing, malformed or inconsistent."""


class AirflowConfigError(PpmlopsError):
    """An Airflow Connection or Variable that ppmlops reads cannot be used: the message names it and
    what is wrong, never its secret values. Not a SpecError: the spec is fine, the deployment's
    Airflow settings are not, and a platform engineer (not the spec's author) fixes them."""


class DataError(PpmlopsError):
    """A data source cannot be read or does not have the declared shape."""


class ValidationFailed(PpmlopsError):
    """A Great Expectations expectation failed on the staged snapshot."""


class PolicyError(PpmlopsError):
    """The policy could not be evaluated (syntax error, engine crash, unreachable server)."""


class PolicyRefused(PpmlopsError):
    """The policy decided against the action; `reasons` lists why."""

    def __init__(self, action: str, reasons: list[str], by: str = "policy"):
        self.action = action
        self.reasons = list(reasons)
        super().__init__(f"{by} refused to {action}: " + "; ".join(self.reasons or ["no reason given"]))


class BudgetExceeded(PpmlopsError):
    """A privacy filter refused a step that would overspend the run's budget."""


class ModelError(PpmlopsError):
    """The spec's own model (model.factory) cannot be built, or cannot be trained with DP-SGD as it
    is; the message names the factory and the layer at fault."""


class TrainingError(PpmlopsError):
    """Training could not start or did not finish (Ray unreachable, worker failure)."""
