"""Throwaway PostgreSQL servers for tests and benchmarks.

:class:`TemporaryPostgres` runs ``initdb`` and ``pg_ctl`` from the newest
``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package) inside a fresh
temporary directory, listens on ``127.0.0.1`` only, on a free port, with
durability switched off (tests never need crash safety and it costs time), and
on exit stops that one server by its own process id and deletes the directory::

    with TemporaryPostgres() as pg:
        conn = psycopg.connect(pg.url)

For test suites, :func:`postgres_url_for_tests` first honours the environment
variable ``PYMODELS_TEST_POSTGRESQL_URL`` (an existing server chosen by the
developer) and only starts a throwaway server when it is unset::

    @pytest.fixture(scope="session")
    def postgresql_url() -> Iterator[str]:
        reason = postgres_skip_reason()
        if reason:
            pytest.skip(reason)
        with postgres_url_for_tests() as url:
            yield url

Running ``python -m pymodels.testing.postgresql -- CMD ARGS...`` runs one
command with ``PYMODELS_TEST_POSTGRESQL_URL`` pointing at a throwaway server and
stops the server afterwards, whatever the command does.

The module uses only the standard library, so it imports without the
``postgresql`` extra (psycopg) installed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from pymodels.testing._servers import ThrowawayServer, free_port, run_command, url_from_env_or

__all__ = [
    "ENV_URL",
    "PostgresError",
    "PostgresNotInstalledError",
    "PostgresStartError",
    "TemporaryPostgres",
    "find_postgres_bin_dir",
    "postgres_skip_reason",
    "postgres_url_for_tests",
]

#: Environment variable naming an existing server to use instead of a throwaway one.
ENV_URL = "PYMODELS_TEST_POSTGRESQL_URL"

#: Where Debian installs one ``<major>/bin`` directory per PostgreSQL version.
DEFAULT_SEARCH_ROOT = Path("/usr/lib/postgresql")

#: Settings every throwaway server gets. Durability is off because a test
#: database is thrown away anyway and fsync dominates the cost of small writes.
BASE_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    # Messages in English whatever the caller's locale, so errors are greppable.
    "lc_messages": "C",
}

_INSTALL_HINT = (
    "PostgreSQL server binaries were not found under {root}/*/bin. "
    "Install them with: apt-get install postgresql "
    f"(or set {ENV_URL} to the URL of an existing server)."
)

# Phrases in the server log that mean another process took our port between
# choosing it and the server binding it; only then is a retry worthwhile.
_PORT_TAKEN = re.compile(r"Address already in use|could not create any TCP/IP sockets")


class PostgresError(RuntimeError):
    """Base class for errors raised by this module."""


class PostgresNotInstalledError(PostgresError):
    """The PostgreSQL server binaries (initdb, pg_ctl, postgres) are missing."""


class PostgresStartError(PostgresError):
    """initdb or the server start failed; the message carries the tool output and log."""


def find_postgres_bin_dir(search_root: Path = DEFAULT_SEARCH_ROOT) -> Path:
    """Return the ``bin`` directory of the newest PostgreSQL under *search_root*.

    Versions are compared numerically (``9.6`` < ``15``), not as strings.

    Raises:
        PostgresNotInstalledError: no directory there holds ``initdb`` and ``pg_ctl``.
    """
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for bin_dir in search_root.glob("*/bin"):
        version = _version_key(bin_dir.parent.name)
        if version is None:
            continue
        if all(os.access(bin_dir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            candidates.append((version, bin_dir))
    if not candidates:
        raise PostgresNotInstalledError(_INSTALL_HINT.format(root=search_root))
    return max(candidates)[1]


def postgres_skip_reason(search_root: Path = DEFAULT_SEARCH_ROOT) -> str | None:
    """Say why PostgreSQL tests cannot run here, or return ``None`` when they can.

    They can when :data:`ENV_URL` names a server or when the binaries are installed.
    Meant for ``pytest.mark.skipif`` / ``pytest.skip``.
    """
    if os.environ.get(ENV_URL):
        return None
    try:
        find_postgres_bin_dir(search_root)
    except PostgresNotInstalledError as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def postgres_url_for_tests(**options: Any) -> Iterator[str]:
    """Yield a PostgreSQL URL for tests: :data:`ENV_URL` if set, else a throwaway server.

    A server started here is stopped when the ``with`` block ends. *options* go
    to :class:`TemporaryPostgres` and are ignored when the environment variable
    is used.
    """
    with url_from_env_or(ENV_URL, lambda: TemporaryPostgres(**options)) as url:
        yield url


class TemporaryPostgres(ThrowawayServer):
    """A PostgreSQL server living in a temporary directory, for one ``with`` block.

    Args:
        bin_dir: directory holding ``initdb`` and ``pg_ctl``; default: the newest
            under ``/usr/lib/postgresql``.
        port: TCP port; default: a free one chosen by the kernel (retried if
            another process grabs it before the server binds).
        settings: extra ``postgresql.conf`` settings, added after the defaults
            (:data:`BASE_SETTINGS`), so they may override them.
        parent_dir: where to create the temporary directory; default: the
            system temp dir. When running as root every ancestor must be
            traversable by the ``postgres`` user.
        start_timeout: seconds to wait for the server to accept connections.
        stop_timeout: seconds to wait after each stop signal before escalating.

    Attributes available while running: :attr:`url`, :attr:`pid`, :attr:`port`,
    :attr:`host`, :attr:`base_dir`, :attr:`data_dir`, :attr:`log_path`.

    Should this process die without stopping the server (even by SIGKILL), the
    :class:`~pymodels.testing._servers.Watchdog` stops it and removes the directory.
    """

    error = PostgresError
    dir_prefix = "pymodels-pg-"
    # If the owner dies: a "fast" shutdown (SIGTERM, "smart", would wait for clients).
    watchdog_signal = signal.SIGINT
    user = "postgres"
    dbname = "postgres"

    def __init__(
        self,
        *,
        bin_dir: Path | str | None = None,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        parent_dir: Path | str | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._bin_dir_arg = Path(bin_dir) if bin_dir is not None else None
        self._fixed_port = port
        self._settings = {**BASE_SETTINGS, **(settings or {})}
        self._parent_dir = Path(parent_dir) if parent_dir is not None else None
        self._pid: int | None = None

    # ------------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` has not run yet."""
        return self._pid is not None

    @property
    def port(self) -> int:
        """TCP port the server listens on (on 127.0.0.1)."""
        if self._port is None or not self.running:
            raise PostgresError("the server is not running")
        return self._port

    @property
    def url(self) -> str:
        """Connection URL, e.g. ``postgresql://postgres@127.0.0.1:54321/postgres``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (``PGDATA``)."""
        return self.base_dir / "pg" / "data"

    @property
    def log_path(self) -> Path:
        """The server log; read it when a test needs the server's side of an error."""
        return self.base_dir / "pg" / "log"

    # ------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Create the cluster, start the server and wait until it accepts connections.

        On any failure everything started so far is stopped and removed before
        the exception propagates.
        """
        with self._lock:
            if self._base_dir is not None:
                raise PostgresError("this TemporaryPostgres was already started")
            bin_dir = self._bin_dir_arg or find_postgres_bin_dir()
            for tool in ("initdb", "pg_ctl", "postgres"):
                if not os.access(bin_dir / tool, os.X_OK):
                    raise PostgresNotInstalledError(
                        f"{bin_dir / tool} is missing or not executable. "
                        "Install the server with: apt-get install postgresql"
                    )
            as_user = _postgres_user_if_root()
            self._create_base_dir(self._parent_dir)
            try:
                self._start(bin_dir, as_user)
            except BaseException:
                self._cleanup()
                raise
            return self

    def stop(self) -> None:
        """Stop the server (if running) and remove the temporary directory. Idempotent.

        In a forked child of the process that started the server it does nothing.
        """
        self.close()

    def _server_pid(self) -> int | None:
        """The postmaster's pid, as written in ``postmaster.pid``."""
        return self._pid

    # --------------------------------------------------------------------- helpers

    def _start(self, bin_dir: Path, as_user: pwd.struct_passwd | None) -> None:
        base = self.base_dir
        pg_dir = base / "pg"
        if as_user is not None:
            # mkdtemp makes a 0700 dir; the postgres user must traverse it to reach
            # its own subdirectory (engines.md pitfall 1).
            base.chmod(0o755)
            _check_traversable(base.parent, as_user)
            pg_dir.mkdir()
            os.chown(pg_dir, as_user.pw_uid, as_user.pw_gid)
        else:
            pg_dir.mkdir()

        self._run(
            bin_dir / "initdb",
            [
                *("-D", str(self.data_dir), "-U", self.user, "--auth=trust"),
                *("-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"),
            ],
            as_user,
            what="initdb",
        )

        attempts = 1 if self._fixed_port is not None else 5
        for attempt in range(1, attempts + 1):
            port = self._fixed_port if self._fixed_port is not None else free_port(self.host)
            self._write_settings(port, pg_dir)
            # A fresh log per attempt, so the port check below reads this attempt only.
            self.log_path.unlink(missing_ok=True)
            try:
                self._run(
                    bin_dir / "pg_ctl",
                    [
                        *("-D", str(self.data_dir), "-l", str(self.log_path)),
                        *("-w", "-t", str(max(1, round(self.start_timeout))), "start"),
                    ],
                    as_user,
                    what="pg_ctl start",
                )
            except PostgresStartError:
                # pg_ctl may give up while a postmaster still runs: stop it by pid
                # before retrying or failing.
                self._kill_postmaster()
                if attempt < attempts and _PORT_TAKEN.search(self._read_log()):
                    continue
                raise
            self._port = port
            break

        pid = self._read_postmaster_pid()
        if pid is None:
            raise PostgresStartError(
                "pg_ctl reported success but postmaster.pid is missing\n" + self._read_log()
            )
        self._pid = pid
        self._wait_for_tcp()

    def _write_settings(self, port: int, socket_dir: Path) -> None:
        # Settings go into postgresql.auto.conf rather than `pg_ctl -o "..."`:
        # pg_ctl hands -o to a shell, which breaks on paths with spaces or quotes.
        # Rewritten on each attempt so a retry can change the port.
        settings = {**self._settings, "port": str(port)}
        settings["unix_socket_directories"] = str(socket_dir)
        lines = [f"{key} = {_conf_quote(value)}\n" for key, value in settings.items()]
        auto_conf = self.data_dir / "postgresql.auto.conf"
        # Opened for writing, not recreated, so the file keeps its postgres owner.
        with auto_conf.open("w", encoding="utf-8") as fh:
            fh.write("# Written by pymodels.testing.postgresql\n")
            fh.writelines(lines)

    def _run(
        self,
        program: Path,
        args: Sequence[str],
        as_user: pwd.struct_passwd | None,
        *,
        what: str,
    ) -> None:
        argv = [str(program), *args]
        if as_user is not None:
            # PostgreSQL refuses to run as root; runuser needs no password as root.
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            argv = [runuser, "-u", as_user.pw_name, "--", *argv]
        try:
            result = subprocess.run(
                argv,
                cwd=self.base_dir,  # a cwd the postgres user can read (not /root)
                env=_tool_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                # pg_ctl -w has its own timeout; this one only guards against hangs.
                timeout=self.start_timeout + 60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresStartError(f"{what} failed: {exc}") from exc
        if result.returncode != 0:
            raise PostgresStartError(
                f"{what} failed with exit code {result.returncode}\n"
                f"command: {' '.join(argv)}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
                f"server log:\n{self._read_log()}"
            )

    def _wait_for_tcp(self) -> None:
        # pg_ctl -w already waited for "ready"; this confirms the TCP listener we
        # hand out (not just the Unix socket) answers.
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise PostgresStartError(
                        f"server did not accept TCP connections on {self.host}:{self.port}\n"
                        + self._read_log()
                    ) from None
                time.sleep(0.05)

    def _read_log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-8000:]
        except OSError:
            return "(no server log)"

    def _read_postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first.strip())
        except (OSError, ValueError):
            return None

    def _postmaster_pids(self) -> list[int]:
        """Process ids of postmasters serving *our* data dir (normally one, or none)."""
        pids: list[int] = []
        pid = self._pid or self._read_postmaster_pid()
        if pid is not None and _is_postmaster_for(pid, self.data_dir):
            pids.append(pid)
        if not pids:
            # No usable pid file (e.g. start died half-way): look for a process
            # started with exactly our unique data dir, and nothing broader.
            pids.extend(_scan_postmasters_for(self.data_dir))
        return pids

    def _kill_postmaster(self) -> None:
        """Stop our postmaster by pid: fast shutdown, then immediate, then SIGKILL."""
        if self._base_dir is None:
            return
        for pid in self._postmaster_pids():
            # SIGINT = "fast" shutdown: disconnects clients, unlike SIGTERM ("smart"),
            # which would wait for a test's leaked connection forever.
            for sig, timeout in (
                (signal.SIGINT, self.stop_timeout),
                (signal.SIGQUIT, 5.0),
                (signal.SIGKILL, 5.0),
            ):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                if _wait_gone(pid, timeout):
                    break
            else:
                raise PostgresError(f"postmaster {pid} survived SIGKILL")

    def _stop_server(self) -> None:
        try:
            self._kill_postmaster()
        finally:
            self._pid = None


# ------------------------------------------------------------------ module helpers


def _version_key(name: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return None


def _postgres_user_if_root() -> pwd.struct_passwd | None:
    """The account to run the server as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresNotInstalledError(
            "running as root but there is no 'postgres' user to run the server as. "
            "Install the server with: apt-get install postgresql"
        ) from None


def _check_traversable(directory: Path, user: pwd.struct_passwd) -> None:
    """Fail early, with a clear message, when *user* cannot reach *directory*.

    Checks the "other" execute bit of each ancestor (group membership is
    ignored: a conservative approximation that is right for /tmp and friends).
    """
    for path in (directory, *directory.parents):
        st = path.stat()
        if st.st_uid != user.pw_uid and not st.st_mode & 0o001:
            raise PostgresStartError(
                f"the {user.pw_name} user cannot traverse {path} (mode {st.st_mode & 0o777:o}); "
                "pass parent_dir= a directory under /tmp or set TMPDIR"
            )


def _tool_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGHOST, ...) from the caller's shell would
    # silently redirect the tools; a fixed locale keeps tool output in English.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    env["LANG"] = "C.UTF-8"
    return env


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _is_postmaster_for(pid: int, data_dir: Path) -> bool:
    """True when *pid* is a live ``postgres`` process started with ``-D <data_dir>``.

    Guards against signalling an unrelated process that reused a stale pid, and
    against matching pg_ctl/runuser, whose arguments also name the data dir.
    """
    args = _cmdline(pid)
    if not args or Path(args[0]).name not in ("postgres", "postmaster"):
        return False
    started_here = any(a == "-D" and b == str(data_dir) for a, b in itertools.pairwise(args))
    return started_here and not _is_zombie(pid)


def _scan_postmasters_for(data_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_postmaster_for(int(entry.name), data_dir):
            found.append(int(entry.name))
    return found


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may hold spaces.
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # pg_ctl daemonises the postmaster, so it is never our child and init reaps
    # it; a zombie is as good as gone for our purposes.
    return not _is_zombie(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# Servers started and not yet stopped, which an atexit hook stops as a last resort.
_LIVE = TemporaryPostgres._live


# ------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command with :data:`ENV_URL` set to a throwaway server; return its exit code.

    Usage: ``python -m pymodels.testing.postgresql [--] CMD [ARGS...]``. Without a
    command, print the URL and wait for Ctrl-C.
    """
    return run_command(
        argv,
        lambda: TemporaryPostgres().start(),
        PostgresError,
        lambda pg: pg.stop(),
        lambda pg: {ENV_URL: pg.url},
    )


if __name__ == "__main__":
    raise SystemExit(main())
