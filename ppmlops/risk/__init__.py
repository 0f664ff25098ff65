"""PRAM, the privacy risk assessment module: see ppmlops.risk.assess for the score and its weights."""
