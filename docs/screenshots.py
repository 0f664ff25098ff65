"""The dashboard pictures in the docs, taken from the real dashboard over real run state.

Regenerate (from the repository root, after `./dev demo` has left a run in `.ppmlops/`):

    ./dev demo
    .venv/bin/python docs/screenshots.py            # writes docs/images/dashboard_run.png

Options: `--home DIR` reads another ppmlops home (default `.ppmlops`, where `./dev demo` writes),
`--page run|overview|dataset` picks the page (default `run`: the newest run's page), `--out PNG`.

How: the home is copied to a temporary folder (the dashboard only reads, but settings may create
key files, and the real home stays untouched); the dashboard's own FastAPI app
(`ppmlops.dashboard.app:create_app`, without Airflow's login in front: the reader is the local
one, who sees what a compliance officer sees) is served by uvicorn on a free loopback port;
Debian's Chromium, driven by Playwright as `tests/e2e/test_dashboard_browser.py` drives it (no
browser download), loads the page in the light theme and saves a screenshot of its top, which is
then reduced to a 256-colour palette to keep the PNG small (under 300 KB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH, HEIGHT = 1280, 1500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PPMLOPS_DB_URL", "MLFLOW_TRACKING_URI", "PPMLOPS_RANDOMNESS")}
    env.update(PPMLOPS_HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "ppmlops.dashboard.app:create_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the dashboard stopped at start-up:\n{log.read_text()}")
        try:
            httpx.get(url + "/static/dashboard.css", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    sys.exit(f"the dashboard did not answer within 60 s:\n{log.read_text()}")


def _page_path(base: str, page: str) -> str:
    if page == "overview":
        return "/"
    if page == "dataset":
        ids = [d["dataset_id"] for d in httpx.get(base + "/api/datasets", timeout=30).json()["datasets"]]
        if not ids:
            sys.exit("no dataset in the ledger: run ./dev demo first")
        return "/datasets/" + quote(ids[0], safe="")
    runs = httpx.get(base + "/api/runs", params={"limit": 50}, timeout=30).json()["runs"]
    finished = [r for r in runs if not r.get("refused") and r.get("outcome")]
    if not finished:
        sys.exit("no finished run in this home: run ./dev demo first")
    newest = max(finished, key=lambda r: r.get("modified") or 0)
    return f"/runs/{quote(newest['pipeline'], safe='')}/{quote(newest['run_id'], safe='')}"


def _shoot(url: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT}, color_scheme="light")
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            response = page.goto(url, wait_until="networkidle")
            if response is None or response.status != 200:
                sys.exit(f"{url}: HTTP {response.status if response else '?'}")
            if errors:
                sys.exit(f"{url}: console errors: {errors}")
            page.screenshot(path=str(out), full_page=False)
        finally:
            browser.close()


def _shrink(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=REPO / ".ppmlops", help="the ppmlops home to show (./dev demo's)")
    ap.add_argument("--page", choices=("run", "overview", "dataset"), default="run")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "dashboard_run.png")
    args = ap.parse_args(argv)
    if not (args.home / "runs").is_dir():
        sys.exit(f"{args.home}: no runs here; run ./dev demo first (or pass --home)")
    with tempfile.TemporaryDirectory(prefix="ppmlops-shots-") as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(args.home, home, symlinks=True)
        port, log = _free_port(), Path(tmp) / "dashboard.log"
        proc = _serve(home, port, log)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait(base, proc, log)
            url = base + _page_path(base, args.page)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            _shoot(url, args.out)
            _shrink(args.out)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"{args.out}: {args.out.stat().st_size // 1024} KiB ({url.replace(base, '')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
