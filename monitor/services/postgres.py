"""A local PostgreSQL cluster of the project's own: its folder, its port, its role and database.

Debian's PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres``
user and every server command runs through ``runuser -u postgres --``. The superuser is reached
only through the cluster's own Unix socket (peer authentication); TCP on 127.0.0.1 needs the
role's password (scram-sha-256).
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from monitor.config import ServicesSettings
from monitor.errors import ServiceError
from monitor.services import process

_LOOPBACK = {"127.0.0.1", "localhost"}


def find_bin_dir(configured: Path | None) -> Path | None:
    """The configured folder, or the newest Debian ``/usr/lib/postgresql/N/bin`` with ``pg_ctl``."""
    if configured is not None:
        return configured if (configured / "pg_ctl").exists() else None
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").exists()]
    candidates.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return candidates[-1] if candidates else None


def sql_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every supported PostgreSQL)."""
    if "\0" in value:
        raise ServiceError("a NUL byte cannot be part of a PostgreSQL password")
    return "'" + value.replace("'", "''") + "'"


class LocalPostgres:
    def __init__(self, services: ServicesSettings, *, data_dir: Path):
        self.services = services
        parts = urlsplit(services.postgres_url.get_secret_value())
        if parts.hostname not in _LOOPBACK:
            raise ServiceError(
                f"services.postgres_url points at {parts.hostname}, not this machine: to use that server as it is, "
                "set MONITOR_SERVICES__MANAGE_POSTGRES=false"
            )
        self.port = parts.port or 5432
        self.role = unquote(parts.username or "")
        self.password = unquote(parts.password or "")
        self.database = parts.path.strip("/")
        self.as_root = os.geteuid() == 0
        # /root is not readable by the postgres user, so a root-run cluster lives under /var/lib.
        default_home = (
            Path("/var/lib/health-monitor") / f"pg-{self.port}"
            if self.as_root
            else data_dir / "services" / f"postgres-{self.port}"
        )
        self.home = services.postgres_data_dir or default_home
        self.cluster = self.home / "data"
        self.socket_dir = self.home / "run"
        self.log_file = self.home / "postgres.log"
        self.pid_file = data_dir / "services" / f"postgres-{self.port}.pid"

    # -- binaries and users -----------------------------------------------------------------

    def bin_dir(self, *, install: bool) -> Path:
        found = find_bin_dir(self.services.postgres_bin)
        if found is None and install and self.services.postgres_bin is None:
            process.apt_install(["postgresql"], "PostgreSQL server binaries are needed")
            found = find_bin_dir(None)
        if found is None:
            where = self.services.postgres_bin or "/usr/lib/postgresql/*/bin"
            raise ServiceError(
                f"no PostgreSQL server binaries (pg_ctl) in {where}: install Debian's postgresql "
                "or set MONITOR_SERVICES__POSTGRES_BIN"
            )
        return found

    def _owner(self) -> str:
        return "postgres" if self.as_root else getpass.getuser()

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else cmd

    def _prepare_dirs(self) -> None:
        for folder in (self.home, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServiceError("the postgres system user is missing: reinstall Debian's postgresql") from exc
            for folder in (self.home, self.socket_dir):
                shutil.chown(folder, owner.pw_uid, owner.pw_gid)

    # -- lifecycle --------------------------------------------------------------------------

    def _initdb_once(self, bin_dir: Path) -> None:
        if (self.cluster / "PG_VERSION").exists():
            return
        process.run(
            self._as_owner([
                str(bin_dir / "initdb"), "-D", str(self.cluster), "-U", self._owner(),
                "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
            ]),
            what="initdb of the local PostgreSQL cluster",
        )

    def running(self, bin_dir: Path | None = None) -> bool:
        bin_dir = bin_dir or self.bin_dir(install=False)
        if not (self.cluster / "PG_VERSION").exists():
            return False
        try:
            process.run(self._as_owner([str(bin_dir / "pg_ctl"), "-D", str(self.cluster), "status"]),
                        what="pg_ctl status", timeout_s=30)
        except ServiceError:
            return False
        return True

    def postmaster_pid(self) -> int | None:
        return process.read_pid(self.cluster / "postmaster.pid")

    def start(self) -> str:
        bin_dir = self.bin_dir(install=True)
        self._prepare_dirs()
        self._initdb_once(bin_dir)
        if self.running(bin_dir):
            message = f"already running (pid {self.postmaster_pid()})"
        else:
            options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
            process.run(
                self._as_owner([
                    str(bin_dir / "pg_ctl"), "-D", str(self.cluster), "-l", str(self.log_file),
                    "-o", options, "-w", "-t", str(int(self.services.start_timeout_s)), "start",
                ]),
                what=f"starting PostgreSQL on 127.0.0.1:{self.port} (log {self.log_file})",
                timeout_s=self.services.start_timeout_s + 10,
            )
            message = f"started (pid {self.postmaster_pid()}), log {self.log_file}"
        self.pid_file.write_text(f"{self.postmaster_pid()}\n")
        self._ensure_role_and_database(bin_dir)
        return message

    def _psql(self, bin_dir: Path, sql: str, *, database: str = "postgres") -> str:
        return process.run(
            self._as_owner([
                str(bin_dir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-p", str(self.port), "-U", self._owner(), "-d", database, "-f", "-",
            ]),
            what="psql on the local PostgreSQL",
            input_text=sql,  # on stdin: the password never appears in a process list
            timeout_s=60,
        )

    def _ensure_role_and_database(self, bin_dir: Path) -> None:
        role, db = f'"{self.role}"', f'"{self.database}"'  # both checked to be plain identifiers
        exists = self._psql(bin_dir, f"SELECT 1 FROM pg_roles WHERE rolname = {sql_literal(self.role)};").strip()
        verb = "ALTER" if exists else "CREATE"
        # CREATEDB lets the test suite make a throw-away database per session.
        self._psql(bin_dir, f"{verb} ROLE {role} LOGIN CREATEDB PASSWORD {sql_literal(self.password)};")
        if not self._psql(bin_dir, f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(self.database)};").strip():
            self._psql(bin_dir, f"CREATE DATABASE {db} OWNER {role} ENCODING 'UTF8' TEMPLATE template0;")

    def stop(self) -> str:
        bin_dir = find_bin_dir(self.services.postgres_bin)
        if bin_dir is None or not self.running(bin_dir):
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        pid = self.postmaster_pid()
        process.run(
            self._as_owner([str(bin_dir / "pg_ctl"), "-D", str(self.cluster), "-m", "fast", "-w", "-t", "60", "stop"]),
            what="stopping the local PostgreSQL",
            timeout_s=90,
        )
        self.pid_file.unlink(missing_ok=True)
        return f"stopped (pid {pid})"

    def status(self) -> process.Status:
        bin_dir = find_bin_dir(self.services.postgres_bin)
        running = bin_dir is not None and self.running(bin_dir)
        detail = f"127.0.0.1:{self.port}, cluster {self.cluster}" if bin_dir else "PostgreSQL binaries not installed"
        return process.Status("postgres", running, self.postmaster_pid() if running else None, detail)
