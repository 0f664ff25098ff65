"""A run: its typed records and its folder (ppmlops.run.records, ppmlops.run.store)."""
