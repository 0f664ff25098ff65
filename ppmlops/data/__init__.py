"""Data stages: synthetic demo table, ingestion with quarantine, feature encoding, GX validation.

Modules are imported by name (ppmlops.data.ingest, ...) so importing the package stays cheap:
Great Expectations in particular is only imported when validation runs.
"""
