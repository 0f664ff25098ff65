"""Latency of one policy decision, embedded OPA engine against OPA over HTTP, on this machine.

    .venv/bin/python benchmarks/policy_latency.py [--decisions 200]

For each of data.ppmlops.train, .budget and .deploy on the demo inputs (the shapes the pipeline
sends), times --decisions calls of ppmlops.compliance.evaluate, as the caller waits for them
(policy file read and hashed, input copied, the Decision built), after one warm-up call that is
reported on its own:

* embedded: the default engine, OPA's Go engine in the long-lived worker process. The first
  warm-up of the run includes starting the worker and compiling the policy; later ones only
  prepare that query. Timed decisions reuse the compiled policy and prepared query.
* opa-http: the OPA server path (opa-python-client: PUT the policy, POST the Data API query,
  GET the policy back to check its hash, under one deadline) against the loopback server in
  tests/opa_server.py, which evaluates with the same OPA engine in this process and, like OPA,
  skips the compile when the PUT text is unchanged. So the opa-http figures are three
  loopback round trips through Python's http.server plus OPA's evaluation, not a real OPA
  binary's server.

For reference, "opa-lib" rows time the OPA engine alone on the same inputs, called in this
process through the bindings (no worker, no policy read, no Decision; this process's Go runtime
runs at the default GOGC, the worker's at 400): the difference to the embedded rows is roughly
what the worker process and ppmlops's own bookkeeping cost.

Then both engines' decisions pooled over the three queries: p50, p99 and the ratio, measured in
this one run. Every decision is checked (no error, expected outcome, engine) before its time
counts. Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ppmlops.compliance import evaluate  # noqa: E402
from ppmlops.compliance.engine import ENGINE_EMBEDDED, ENGINE_OPA  # noqa: E402

from opa_server import FakeOpa as LoopbackOpa  # noqa: E402  the tests' OPA Data API server

from ppmlops.compliance.examples import DEPLOY_INPUT, TRAIN_INPUT  # noqa: E402

# (query, input, expected outcome): a decision that came out otherwise is a failure, not a time.
CASES = [
    ("data.ppmlops.train", TRAIN_INPUT, "allow"),
    ("data.ppmlops.budget", TRAIN_INPUT, "allow"),
    ("data.ppmlops.deploy", DEPLOY_INPUT, "allow"),
]


def time_decisions(engine: str, query: str, doc: dict, expected: str, n: int) -> tuple[float, list[float]]:
    """(warm-up ms, n timed ms) of evaluate(query, doc); exits naming the decision if one fails."""
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        d = evaluate(query, doc)
        ms = (time.perf_counter() - t) * 1e3
        if d.error is not None or d.outcome != expected or d.engine != engine:
            sys.exit(f"{engine} {query} decision {i}: outcome {d.outcome} via {d.engine}, expected {expected} via "
                     f"{engine}; reasons {d.reasons}")
        times.append(ms)
    return times[0], times[1:]


def time_engine_alone(query: str, doc: dict, expected: str, n: int) -> tuple[float, list[float]]:
    from opa_bindings import OpaEngine

    from ppmlops.compliance.engine import normalise

    engine = OpaEngine()
    policy = Path(__file__).resolve().parent.parent / "policies.rego"
    engine.add_policy(str(policy), policy.read_text())
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        value = engine.eval_document(query[len("data."):], doc)
        times.append((time.perf_counter() - t) * 1e3)
        if normalise(query, value)[0] != expected:
            sys.exit(f"opa-lib {query} decision {i}: {value}, expected {expected}")
    engine.close()
    return times[0], times[1:]


def quantile(values: list[float], q: int) -> float:
    # Nearest-rank: the smallest value at or above q% of the sample (no interpolation).
    ordered = sorted(values)
    return ordered[max(0, -(-q * len(ordered) // 100) - 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=200, help="timed decisions per engine and query (default 200)")
    args = ap.parse_args()
    if args.decisions < 1:
        ap.error("--decisions must be at least 1")

    os.environ["PPMLOPS_HOME"] = tempfile.mkdtemp(prefix="ppmlops-bench-")
    for var in ("PPMLOPS_OPA_URL", "PPMLOPS_POLICY", "PPMLOPS_OPA_TIMEOUT_S"):
        os.environ.pop(var, None)

    print(f"policy decision latency, ms per decision as the caller waits; {args.decisions} timed decisions "
          f"per row after one warm-up; {os.cpu_count()} CPUs")
    print(f"{'engine':<10} {'query':<22} {'p50':>8} {'p99':>8} {'min':>8} {'warm-up':>8} {'n':>5}")
    pooled: dict[str, list[float]] = {}
    with LoopbackOpa() as opa:
        for engine, label in [(ENGINE_EMBEDDED, "embedded"), (ENGINE_OPA, "opa-http")]:
            if engine == ENGINE_OPA:
                os.environ["PPMLOPS_OPA_URL"] = opa.url
            for query, doc, expected in CASES:
                first, times = time_decisions(engine, query, doc, expected, args.decisions)
                pooled.setdefault(label, []).extend(times)
                print(f"{label:<10} {query:<22} {quantile(times, 50):8.2f} {quantile(times, 99):8.2f} "
                      f"{min(times):8.2f} {first:8.2f} {len(times):5d}")
        os.environ.pop("PPMLOPS_OPA_URL", None)
    for query, doc, expected in CASES:
        first, times = time_engine_alone(query, doc, expected, args.decisions)
        pooled.setdefault("opa-lib", []).extend(times)
        print(f"{'opa-lib':<10} {query:<22} {quantile(times, 50):8.2f} {quantile(times, 99):8.2f} "
              f"{min(times):8.2f} {first:8.2f} {len(times):5d}")
    emb, http, lib = pooled["embedded"], pooled["opa-http"], pooled["opa-lib"]
    print(f"all three queries: embedded p50 {quantile(emb, 50):.2f} ms, p99 {quantile(emb, 99):.2f} ms; "
          f"opa-http p50 {quantile(http, 50):.2f} ms, p99 {quantile(http, 99):.2f} ms; "
          f"opa-http / embedded: p50 x{quantile(http, 50) / quantile(emb, 50):.1f}, "
          f"p99 x{quantile(http, 99) / quantile(emb, 99):.1f}; the engine alone (opa-lib) p50 "
          f"{quantile(lib, 50):.2f} ms, p99 {quantile(lib, 99):.2f} ms")
    print("opa-http rows are against the loopback test server in tests/opa_server.py (Python http.server around "
          "OPA's engine), not an OPA binary's server.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
