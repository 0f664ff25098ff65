"""What a dashboard query can fail with; app.py turns each into its HTTP status."""

from ppmlops.errors import PpmlopsError


class Unavailable(PpmlopsError):
    """The ledger / audit database cannot be opened or read."""


class NotFound(PpmlopsError):
    """The dataset, decision or run asked for does not exist."""
