"""A throwaway PostgreSQL server for the `postgres` tier: initdb into a temp folder, `postgres` on a free port.

Uses the server binaries of Debian's `postgresql` package (`scripts/install.sh` installs it with
GEODE_INSTALL_POSTGRES=1; `.ci/run` sets that). PostgreSQL refuses to run as root, so under root (CI) the
cluster is owned by and run as the package's `postgres` user. Start-up takes about a second
(`initdb --no-sync`, `fsync=off`: the data is thrown away after the session).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .serve_helpers import free_port


def server_binaries() -> tuple[Path, Path] | None:
    """``initdb`` and ``postgres``: on PATH, else the newest under /usr/lib/postgresql (Debian's layout)."""
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return Path(initdb), Path(postgres)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3].split(".")[0])
    )
    if found:
        folder = Path(found[-1]).parent
        if (folder / "postgres").exists():
            return folder / "initdb", folder / "postgres"
    return None


def _run_as() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam("postgres")  # created by Debian's postgresql package
    return user.pw_uid, user.pw_gid


@contextmanager
def running_postgres(start_timeout_s: float = 60.0) -> Iterator[str]:
    """Run a fresh PostgreSQL until the block ends; yields its URL (user ``geode``, trust auth, loopback).

    Raises:
        FileNotFoundError: No PostgreSQL server binaries on this machine.
    """
    binaries = server_binaries()
    if binaries is None:
        raise FileNotFoundError("no initdb/postgres: apt-get install postgresql (scripts/install.sh does)")
    initdb, postgres = binaries
    folder = Path(tempfile.mkdtemp(prefix="geode-pg-"))
    owner = _run_as()
    uid, gid = owner if owner is not None else (None, None)
    if owner is not None:
        os.chown(folder, *owner)
    data = folder / "data"
    log = folder / "postgres.log"
    subprocess.run(
        [str(initdb), "-D", str(data), "-U", "geode", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        user=uid,
        group=gid,
    )
    port = free_port()
    with log.open("w") as sink:
        if owner is not None:
            os.chown(log, *owner)
        process = subprocess.Popen(
            [
                str(postgres),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(folder),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            user=uid,
            group=gid,
        )
    url = f"postgresql://geode@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"postgres exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                psycopg.connect(
                    f"host=127.0.0.1 port={port} user=geode dbname=postgres", connect_timeout=2
                ).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres not ready in {start_timeout_s} s:\n{log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: ends sessions, no checkpoint wait
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
