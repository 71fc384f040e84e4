"""A real PostgreSQL for tests: a cluster of its own in a temporary folder, on a free loopback port.

`initdb` and `postgres` refuse to run as root, so as root the cluster belongs to the `postgres`
user (Debian's packages create it) and its processes run as that user. Nothing here uses a server
the machine may already run. `.ci/run` installs PostgreSQL with apt when no `initdb` is found.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness import free_port

DATABASE = "fleet"
USER = "fleet"


NEEDED = ("initdb", "postgres", "pg_isready", "createdb")


def postgres_bin_dir() -> Path | None:
    """The folder holding `initdb`, `postgres`, `pg_isready` and `createdb`: the one `initdb` on
    PATH resolves to, else the newest Debian install (/usr/lib/postgresql/<version>/bin)."""
    candidates = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    candidates += [Path(d) for d in reversed(debian)]
    for folder in candidates:
        if all((folder / name).exists() for name in NEEDED):
            return folder
    return None


def require_postgres() -> Path:
    """The binaries' folder, or skip the test with the reason (CI installs PostgreSQL)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    return bin_dir


class PostgresServer:
    """`postgres` on 127.0.0.1:<free port> with a trusted user `fleet` and a database `fleet`.
    `stop()` and `start()` let a test take it away and bring it back with its data."""

    def __init__(self) -> None:
        self.bin = require_postgres()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._owner = self._run_as()
        if self._owner is not None:
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        self._call(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()
        self._call(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (psycopg 3)."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> None:
        argv = [
            str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
            "-k", str(self.dir), "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self._as_owner(argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop(signal.SIGKILL)  # a server that did not come up is not left behind
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            if self.proc is None or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the server (SIGINT: fast shutdown; SIGKILL: a crash); its data stays."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- running as the cluster's owner ----------------------------------------------------------

    @staticmethod
    def _run_as() -> pwd.struct_passwd | None:
        """As root: the unprivileged user the cluster belongs to; otherwise None (the caller)."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        raise RuntimeError("running as root, and there is no postgres or nobody user to run PostgreSQL as")

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self._owner is None:
            return argv
        return ["runuser", "-u", self._owner.pw_name, "--", *argv]

    def _call(self, *argv: str) -> None:
        done = subprocess.run(self._as_owner(list(argv)), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}\n{done.stderr}")
