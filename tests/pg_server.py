"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl under a folder, on loopback.

The binaries come from Debian's `postgresql` package (`./dev test` installs it): on PATH, or under
/usr/lib/postgresql/<version>/bin where Debian puts them. The server listens on 127.0.0.1 only,
on a free port, with a random password (scram-sha-256), its socket in the same folder, fsync
off (the data is thrown away). PostgreSQL refuses to run as root, so as root it runs as the
`postgres` user the package creates.

    python tests/pg_server.py start DIR   # prints the SQLAlchemy URL of the server's `postgres` database
    python tests/pg_server.py stop DIR

./dev test starts one for the whole test run and exports PPMLOPS_TEST_PG_URL; the `pg_url` fixture
(tests/conftest.py) uses that, or starts its own when run without ./dev.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

URL_FILE = "url"


class PostgresUnavailable(RuntimeError):
    pass


def binaries() -> Path:
    """The folder holding initdb and pg_ctl."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    raise PostgresUnavailable(
        "PostgreSQL's initdb/pg_ctl were not found (on PATH or under /usr/lib/postgresql/*/bin): "
        "install Debian's package with `apt-get install -y postgresql`, or point PPMLOPS_TEST_PG_URL "
        "at a server (postgresql+psycopg2://user:password@127.0.0.1:5432/postgres)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root without `runuser`: PostgreSQL cannot be started as root")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no `postgres` user to run the server as "
                                  "(Debian's postgresql package creates it)") from None
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise PostgresUnavailable(f"{what} failed (exit {proc.returncode}):\n{tail}")


def start(base: Path) -> str:
    """Start a server under `base` (created) and return its URL."""
    bindir = binaries()
    base = Path(base).resolve()
    base.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        for p in (base, pwfile):
            os.chown(p, user.pw_uid, user.pw_gid)
    data, port = base / "data", _free_port()
    _run([str(bindir / "initdb"), "-D", str(data), "-U", "ppmlops", "--auth=scram-sha-256",
          f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync", "--locale=C"], "initdb")
    pwfile.unlink()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} -c fsync=off " \
              f"-c full_page_writes=off -c max_connections=100"
    _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-o", options, "-w",
          "-t", "60", "start"], f"pg_ctl start (log: {base / 'server.log'})")
    url = f"postgresql+psycopg2://ppmlops:{password}@127.0.0.1:{port}/postgres"
    (base / URL_FILE).write_text(url)
    (base / URL_FILE).chmod(0o600)
    return url


def stop(base: Path) -> None:
    data = Path(base).resolve() / "data"
    if (data / "postmaster.pid").exists():
        _run([str(binaries() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], "pg_ctl stop")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: pg_server.py start|stop DIR", file=sys.stderr)
        return 2
    try:
        if argv[0] == "start":
            print(start(Path(argv[1])))
        else:
            stop(Path(argv[1]))
    except PostgresUnavailable as err:
        print(f"pg_server: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
