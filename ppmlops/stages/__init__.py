"""The stages of a run, one module each, in the order the flow runs them:
ingest -> validate -> assess -> plan -> train -> evaluate -> gate -> (approval) -> deploy.
Each exposes `run(ctx) -> Record`; ppmlops.pipeline composes them and the DAG wires them."""
