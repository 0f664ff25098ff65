"""Audit trail: every policy decision, hash-chained so tampering shows."""

from ppmlops.audit.log import AuditLog

__all__ = ["AuditLog"]
