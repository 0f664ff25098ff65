"""Data stages: synthetic demo table, reading (encodings, delimiters, chunks), consent rules,
keyed pseudonyms, ingestion with quarantine, feature encoding, GX validation and data docs.

Modules are imported by name (ppmlops.data.ingest, ...) so importing the package stays cheap:
Great Expectations in particular is only imported when validation runs.
"""
