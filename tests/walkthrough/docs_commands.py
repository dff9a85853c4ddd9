"""Runs the commands the README and docs/ show, literally, as a person would type them.

A block's commands are taken from the document itself (never copied into a test), so a doc
change that breaks a command breaks its walk-through test. Only what cannot be literal is
substituted, each substitution named: the port (a free one, as the test suite shares the
machine), the fingerprints (the doc shows examples; a person types the ones printed), the
checkout's ``samples/`` and, for the deployment doc, the system paths (a test cannot write
to /etc or /var/lib).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE = Path(sys.executable).with_name("appliance")
COMMAND_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def section(doc: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = doc.index(heading + "\n")
    rest = doc[start + len(heading) + 1:]
    m = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[: m.start()] if m else rest


def fenced_blocks(text: str, lang: str = "sh") -> list[list[str]]:
    """The commands of each ```lang block: one per line, comments dropped."""
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)
    return [[ln.strip() for ln in b.splitlines() if ln.strip() and not ln.strip().startswith("#")] for b in blocks]


def indented_commands(text: str) -> list[str]:
    """The commands of the first indented (4-space) block, continuation lines joined."""
    m = re.search(r"((?:^    .*\n|^\n)+)", text, re.M)
    joined = re.sub(r"\\\n\s*", " ", m.group(1))
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


@dataclass
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout + self.stderr


@dataclass
class Shell:
    """Runs doc commands in ``cwd`` with ``subs`` applied to each argument; remembers the
    background processes it started (`cmd &`) and stops them, by pid, in ``close``."""

    cwd: Path
    subs: dict[str, str] = field(default_factory=dict)
    background: list[subprocess.Popen] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ, PYTHONUNBUFFERED="1"))

    def argv(self, command: str) -> list[str]:
        args = shlex.split(command)
        out = []
        for a in args:
            for old, new in self.subs.items():
                a = a.replace(old, new)
            out.append(a)
        if out and out[0] == "appliance":
            out[0] = str(APPLIANCE)
        return out

    def run(self, command: str, *, check: bool = True) -> Ran:
        command = command.strip()
        if command.endswith("&"):
            return self._start(command[:-1].strip())
        proc = subprocess.run(self.argv(command), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        ran = Ran(command, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"`{command}` exited {proc.returncode}:\n{ran.out}")
        return ran

    def _start(self, command: str) -> Ran:
        argv = self.argv(command)
        log = (self.cwd / f"bg-{len(self.background)}.log").open("w")
        proc = subprocess.Popen(argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.background.append(proc)
        if "--ready-file" in argv:
            ready = self.cwd / argv[argv.index("--ready-file") + 1]
            deadline = time.monotonic() + 60
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ready.exists(), f"`{command}` did not become ready:\n{(self.cwd / log.name).read_text()}"
        return Ran(command, 0, "", "")

    def close(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.background:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.background.clear()
