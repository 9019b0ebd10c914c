"""A private PostgreSQL instance (own data dir, own port) for tests and local debugging."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.environment.processes import (
    EnvironmentFailure,
    kill_process_group,
    pid_alive,
    port_accepts,
    run,
    spawn,
    tail,
    wait_until,
)


def _postgres_bin_dir() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if not candidates:
        raise EnvironmentFailure("PostgreSQL server binaries not found (apt-get install postgresql)")
    return candidates[0].parent


@dataclass
class PostgresServer:
    """One postmaster; databases are created per test module by ``create_database``."""

    base_dir: Path
    port: int = 35432
    user: str = "postgres"

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        self.bin_dir = _postgres_bin_dir()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    # initdb and the postmaster refuse to run as root, so as root they run as the
    # unprivileged account the Debian package creates.
    def _as_owner(self, args: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return args
        return ["runuser", "-u", self._os_user(), "--", *args]

    @staticmethod
    def _os_user() -> str:
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise EnvironmentFailure("no 'postgres' system user; install Debian's postgresql") from exc
        return "postgres"

    def _chown_tree(self) -> None:
        if os.geteuid() != 0:
            return
        entry = pwd.getpwnam(self._os_user())
        for path in [self.base_dir, *self.base_dir.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        # The postmaster runs as our child rather than daemonised by pg_ctl: this machine's
        # PID 1 does not reap orphans, and a zombie postmaster would block the next start.
        self.process = spawn(
            self._as_owner([str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]), self.log_file
        )
        wait_until(self._ready, 120, "PostgreSQL to accept connections")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise EnvironmentFailure(f"PostgreSQL exited:\n{tail(self.log_file)}")
        return port_accepts(self.port) and self._query_ok()

    def is_running(self) -> bool:
        return port_accepts(self.port) and self._query_ok()

    def _query_ok(self) -> bool:
        try:
            self.psql("SELECT 1")
        except EnvironmentFailure:
            return False
        return True

    def _initdb(self) -> None:
        if self.base_dir.exists():
            shutil.rmtree(self.base_dir)
        self.base_dir.mkdir(parents=True)
        self.base_dir.chmod(0o755)
        self._chown_tree()
        run(
            self._as_owner(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        )
        # Full durability stays on (fsync, synchronous_commit): the tests measure the real thing.
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base_dir}'\nmax_connections = 400\n"
                "shared_buffers = 256MB\n"
            )

    def stop(self) -> None:
        """Fast shutdown: running transactions are rolled back, clients disconnected."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.postmaster_pid(), signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill_process_group(self.process)
        elif self.process is None and (self.data_dir / "postmaster.pid").exists():
            # Started by another process (the debugging script): stop it by its pid.
            pid = self.postmaster_pid()
            if pid_alive(pid):
                os.kill(pid, signal.SIGINT)
                wait_until(lambda: not pid_alive(pid), 60, "postmaster to stop")
        self.process = None

    def restart(self) -> None:
        """A clean restart: clients see their connections dropped, committed data stays."""
        self.stop()
        self.start()

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def crash_restart(self) -> None:
        """kill -9 the postmaster and start again: PostgreSQL runs crash recovery."""
        pid = self.postmaster_pid()
        os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)
        else:
            wait_until(lambda: not pid_alive(pid), 30, "postmaster to die")
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        # Orphaned backends exit once they notice the postmaster is gone; the next
        # postmaster refuses to start while they still hold the shared memory.
        wait_until(lambda: not _backends_running(self.data_dir), 60, "orphaned backends to exit")
        self.start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        return run(
            [
                "psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]
        )

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its SQLAlchemy asyncpg URL."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def describe(self) -> dict[str, object]:
        return {"admin_dsn": self.admin_dsn, "port": self.port, "data_dir": str(self.data_dir)}


def postgres_available() -> bool:
    try:
        _postgres_bin_dir()
    except EnvironmentFailure:
        return False
    return (
        shutil.which("psql") is not None
        and subprocess.run(["id", "postgres"], capture_output=True, check=False).returncode == 0
    )


def _backends_running(data_dir: Path) -> bool:
    """Whether any live (non-zombie) postgres process still runs for ``data_dir``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"postgres" in cmdline and _is_cluster_process(proc, data_dir):
            return True
    return False


def _is_cluster_process(proc: Path, data_dir: Path) -> bool:
    try:
        return Path(os.readlink(proc / "cwd")) == data_dir
    except OSError:
        return False
