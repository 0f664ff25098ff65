"""The demo customer table that ppmlops makes itself, so the product runs with no download.

The table is built to exercise every stage: it carries direct identifiers (name, e-mail, phone,
a US-SSN-like national id, postal code) that must never reach training, a consent column with
refusals, a handful of malformed rows that ingestion must quarantine, and a churn label that is
a logistic function of several features plus noise, so a small model does clearly better than
the majority class.

Columns match dags/pipelines/demo.yaml. Everything is drawn from one numpy Generator seeded by
`seed`, so a seed always gives the same table, byte for byte.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ppmlops.atomic_file import write_csv
if TYPE_CHECKING:
    from ppmlops.spec import SyntheticSource

COLUMNS = [
    "customer_id", "name", "email", "phone", "national_id", "postal_code",
    "age", "sex", "region", "education", "plan",
    "tenure_months", "monthly_spend", "sessions_per_week", "support_tickets",
    "consent", "churned",
]

SEXES = ["female", "male"]
REGIONS = ["north", "south", "east", "west"]
EDUCATION = ["primary", "secondary", "bachelor", "master", "doctorate"]
PLANS = ["basic", "plus", "premium"]

_FIRST = [
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Mateo", "Sofia", "Lucas", "Mia", "Elias", "Amara",
    "Kenji", "Priya", "Omar", "Chloe", "Jonas", "Ines", "Tomasz", "Aisha", "Diego", "Hannah",
    "Wei", "Fatima", "Lars", "Zoe", "Ravi", "Elena", "Kwame", "Nora", "Yusuf",
]
_LAST = [
    "Smith", "Garcia", "Muller", "Rossi", "Kowalski", "Nguyen", "Okafor", "Tanaka", "Silva",
    "Johansson", "Dubois", "Patel", "Haddad", "Novak", "Jensen", "Moreau", "Schmidt", "Costa",
    "Ivanova", "Brown", "Lopez", "Kim", "Wilson", "Fischer", "Ahmed", "Berg", "Rahman", "Cohen",
]
_DOMAINS = ["example.com", "mail.example.org", "example.net", "inbox.example.co.uk"]

# Share of rows that refuse consent; the spec asks for roughly 5-8 %.
CONSENT_NO_RATE = 0.065
# Share of rows made malformed on purpose (at least one of each kind is always present).
MALFORMED_RATE = 0.005
MALFORMED_KINDS = ("non_numeric_age", "empty_label", "unknown_category", "out_of_range")


# With consent_detail: shares of consenting rows whose purposes leave out training, and whose
# consent expired (dates before 2024; the others run to 2030 or later).
PURPOSE_REFUSED_RATE = 0.01
EXPIRED_RATE = 0.01


def generate(n_rows: int, seed: int, consent_detail: bool = False, event_weeks: int | None = None,
             made_on: date | None = None) -> pd.DataFrame:
    """The demo table as strings, exactly as it is written to CSV.

    `consent_detail` adds `consent_purposes` and `consent_expires` after `consent` (for
    spec.dataset.consent.purposes_column / expiry_column); they come from a generator of their
    own, so every other column is the same with or without them.
    """
    if n_rows < len(MALFORMED_KINDS):
        raise ValueError(f"n_rows must be at least {len(MALFORMED_KINDS)}, got {n_rows}")
    rng = np.random.default_rng(seed)
    n = n_rows

    age = np.clip(np.round(18 + rng.gamma(4.0, 6.5, n)), 18, 90).astype(int)
    sex = rng.choice(SEXES, n)
    region = rng.choice(REGIONS, n, p=[0.3, 0.25, 0.25, 0.2])
    education = rng.choice(EDUCATION, n, p=[0.1, 0.35, 0.3, 0.18, 0.07])
    plan_idx = rng.choice(3, n, p=[0.5, 0.33, 0.17])
    plan = np.array(PLANS)[plan_idx]
    tenure = np.clip(np.round(rng.exponential(40.0, n)), 0, 240).astype(int)
    spend_base = np.array([25.0, 60.0, 140.0])[plan_idx]
    spend = np.clip(np.round(spend_base * rng.lognormal(0.0, 0.5, n), 2), 0, 2000)
    sessions = np.clip(rng.poisson(np.where(plan_idx == 0, 4.0, 7.0)), 0, 50)
    tickets = np.clip(rng.poisson(1.2, n), 0, 20)

    # Churn depends on several features at once, all of them legible after [0, 1] scaling, so
    # a small model trained under DP-SGD can still find the signal.
    logit = (
        0.3
        - 2.5 * np.minimum(tenure / 60.0, 2.0)
        + 0.8 * tickets
        - 0.25 * sessions
        + np.array([1.2, 0.0, -1.4])[plan_idx]
        - 0.03 * (age - 40)
        + np.where(region == "south", 0.9, 0.0)
        + rng.normal(0.0, 0.3, n)
    )
    churned = np.where(rng.random(n) < 1.0 / (1.0 + np.exp(-logit)), "yes", "no")
    consent = np.where(rng.random(n) < CONSENT_NO_RATE, "no", "yes")

    first = rng.choice(_FIRST, n)
    last = rng.choice(_LAST, n)
    df = pd.DataFrame(
        {
            "customer_id": [f"C{100000 + i:06d}" for i in range(n)],
            "name": [f"{f} {l}" for f, l in zip(first, last)],
            "email": _emails(rng, first, last),
            "phone": _phones(rng, n),
            "national_id": _national_ids(rng, n),
            "postal_code": [f"{z:05d}" for z in rng.integers(1001, 99951, n)],
            "age": age.astype(str),
            "sex": sex,
            "region": region,
            "education": education,
            "plan": plan,
            "tenure_months": tenure.astype(str),
            "monthly_spend": [f"{s:.2f}" for s in spend],
            "sessions_per_week": sessions.astype(str),
            "support_tickets": tickets.astype(str),
            "consent": consent,
            "churned": churned,
        },
        columns=COLUMNS,
    ).astype(str)
    broken = _break_some_rows(df, rng)
    if consent_detail:
        _add_consent_detail(df, np.random.default_rng([seed, 1]), broken)
    if event_weeks:
        _add_event_time(df, np.random.default_rng([seed, 2]), event_weeks, made_on or date.today())
    return df


def _add_event_time(df: pd.DataFrame, rng: np.random.Generator, weeks: int, made_on: date) -> None:
    """When each row happened: uniform over the `weeks` weeks before `made_on` (UTC, to the second)."""
    end = datetime.combine(made_on, time(), tzinfo=timezone.utc)
    seconds = rng.integers(1, weeks * 7 * 86400 + 1, len(df))
    df.insert(1, "event_time", [(end - timedelta(seconds=int(s))).isoformat() for s in seconds])


def ensure_demo(path: Path, made: "SyntheticSource") -> None:
    """Write the demo table a spec's `source.generate` asks for, unless it is already there."""
    if not Path(path).exists():
        write_demo(path, made.rows, made.seed, made.consent_detail, made.event_weeks)


def _add_consent_detail(df: pd.DataFrame, rng: np.random.Generator, broken: np.ndarray) -> None:
    """Purposes and expiry per row; refusals fall on consenting rows that are not broken, so each
    quarantined row has one cause."""
    n = len(df)
    purposes = rng.choice(["training;analytics", "training", "analytics;training;marketing"], n)
    expires = [f"{y}-{m:02d}-{d:02d}" for y, m, d in zip(rng.integers(2030, 2036, n), rng.integers(1, 13, n),
                                                          rng.integers(1, 29, n))]
    candidates = np.setdiff1d(np.flatnonzero(df["consent"].to_numpy() == "yes"), broken)
    picked = rng.choice(candidates, min(len(candidates), round((PURPOSE_REFUSED_RATE + EXPIRED_RATE) * n)),
                        replace=False)
    cut = round(PURPOSE_REFUSED_RATE * n)
    for row in picked[:cut]:
        purposes[row] = rng.choice(["analytics", "marketing;analytics", ""])
    for row in picked[cut:]:
        expires[row] = f"{rng.integers(2019, 2024)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    at = df.columns.get_loc("consent") + 1
    df.insert(at, "consent_purposes", purposes)
    df.insert(at + 1, "consent_expires", expires)


def write_demo(path: Path, n_rows: int, seed: int, consent_detail: bool = False,
               event_weeks: int | None = None) -> Path:
    """Write the demo table to `path` as CSV; readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = generate(n_rows, seed, consent_detail, event_weeks)
    # Two runs generating at once each replace the file with a complete copy.
    return write_csv(path, df)


def _emails(rng: np.random.Generator, first: np.ndarray, last: np.ndarray) -> list[str]:
    seps = rng.choice([".", "_", ""], len(first))
    nums = rng.integers(0, 100, len(first))
    domains = rng.choice(_DOMAINS, len(first))
    return [
        f"{f.lower()}{s}{l.lower()}{'' if k < 60 else k}@{d}"
        for f, s, l, k, d in zip(first, seps, last, nums, domains)
    ]


def _phones(rng: np.random.Generator, n: int) -> list[str]:
    """Mixed international and national formats, as a real CRM export has them."""
    d = rng.integers(0, 10, (n, 10))
    style = rng.integers(0, 6, n)
    out = []
    for row, s in zip(d, style):
        a = "".join(map(str, row))
        area = str(2 + row[0] % 8) + a[1:3]  # North American area codes do not start with 0 or 1
        if s == 0:
            out.append(f"+1 {area}-555-{a[3:7]}")
        elif s == 1:
            out.append(f"({area}) 555-{a[3:7]}")
        elif s == 2:
            out.append(f"+44 20 7946 {a[3:7]}")
        elif s == 3:
            out.append(f"020 7946 {a[3:7]}")
        elif s == 4:
            out.append(f"+49 30 {a[2:9]}")
        else:
            out.append(f"{area}.555.{a[3:7]}")
    return out


def _national_ids(rng: np.random.Generator, n: int) -> list[str]:
    """US-SSN-like: area 001-899 except 666, group 01-99, serial 0001-9999."""
    area = rng.integers(1, 899, n)
    area = np.where(area == 666, 667, area)
    group = rng.integers(1, 100, n)
    serial = rng.integers(1, 10000, n)
    return [f"{a:03d}-{g:02d}-{s:04d}" for a, g, s in zip(area, group, serial)]


def _break_some_rows(df: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Make ~0.5 % of rows malformed, cycling through the kinds ingestion must quarantine.

    Only consenting rows are broken, so each broken row is quarantined for its defect and the
    tests can count defects separately from refusals.
    """
    consenting = np.flatnonzero(df["consent"].to_numpy() == "yes")
    count = min(len(consenting), max(len(MALFORMED_KINDS), round(MALFORMED_RATE * len(df))))
    rows = np.sort(rng.choice(consenting, count, replace=False))
    for i, row in enumerate(rows):
        kind = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
        if kind == "non_numeric_age":
            df.loc[row, "age"] = ["forty", "abc", "n/a", "3O"][(i // 4) % 4]
        elif kind == "empty_label":
            df.loc[row, "churned"] = ""
        elif kind == "unknown_category":
            df.loc[row, "plan"] = "gold"
        else:
            df.loc[row, "tenure_months"] = "-5" if (i // 4) % 2 else "400"
    return rows
