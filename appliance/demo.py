"""`appliance demo` (`make demo`): the whole product on this machine, on loopback, in a temp dir.

It drives the product only through its own command line, as the people who use it would
(README, docs/provisioning.md), so the demo cannot show something the product cannot do:

1. a station and its keys (`station keygen`), and an evidence key whose private half goes to a
   "custody" directory outside the station (`station evidence-key init`);
2. one box, provisioned without questions: `provision init` → `enrol` → `station devices add`
   → `provision import` with the fingerprint the station printed;
3. the station's receiver (`station serve`), the operator console when it is installed
   (`station console serve`, with a one-time demo login), the box's uplink (`appliance uplink`);
4. the box's pixel daemon (`appliance run`) on a bundled real fight clip: the alarm, the sealed
   clip arriving at the station (envelope version 2: bystanders pixelated for the station key,
   the full video for the evidence key only), its verification and export for a named operator
   with a reason — the redacted rendition, then the full one with the evidence key;
5. the same box on the bundled hug clip: nothing is raised, nothing leaves the box;
6. `audit verify` of both logs and the officer's `audit report`.

``--once`` stops everything and exits (CI, tests); otherwise it stays up until Ctrl-C, so a
person can open the console. Every child process is started here and stopped here, by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.common.errors import ApplianceError

REPO = Path(__file__).resolve().parent.parent
FIGHT_SAMPLE = REPO / "samples" / "scfd_fight_fi023.mp4"
HUG_SAMPLE = REPO / "samples" / "demo_skeleton.mp4"
DEVICE_ID = "demo-box-01"
PROFILE = "bw-polg-44-4"
#: Upper bounds for each wait; the demo never hangs (a step that overruns fails with its output).
STEP_TIMEOUT_S = 180.0
ARRIVAL_TIMEOUT_S = 60.0


class DemoError(ApplianceError):
    exit_code = 1


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole product on loopback in a temp dir: station, one box, "
                                    "a real fight clip raising an alarm, a hug raising nothing",
                       description="Runs a station and one provisioned box on this machine (loopback "
                                   "only, a temporary directory), plays a bundled fight clip and the hug "
                                   "sample through the box and shows what reaches the station.")
    p.add_argument("--once", action="store_true",
                   help="stop everything and exit when the walk-through is done (CI, tests)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory afterwards")
    p.add_argument("--dir", type=Path, help="work here instead of a new temporary directory (must be empty)")
    p.add_argument("--fight", type=Path, default=FIGHT_SAMPLE, help=f"the alarm clip (default {FIGHT_SAMPLE.name})")
    p.add_argument("--hug", type=Path, default=HUG_SAMPLE, help=f"the no-alarm clip (default {HUG_SAMPLE.name})")
    p.set_defaults(func=cmd_demo)


def say(text: str = "") -> None:
    print(text, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Demo:
    def __init__(self, work: Path, fight: Path, hug: Path):
        self.work = work
        self.fight = fight
        self.hug = hug
        self.station = work / "station"
        self.box = work / "box"
        self.config = self.box / "appliance.toml"
        # Outside the station directory: the evidence private key is never stored there.
        self.evidence_key = work / "evidence-custody" / "evidence.key"
        self.children: list[tuple[str, subprocess.Popen, Path]] = []
        self.env = dict(os.environ, APPLIANCE_STATION_DIR=str(self.station), PYTHONUNBUFFERED="1")
        self.started = time.monotonic()
        self.step_no = 0

    # -- running the product's commands --------------------------------------------------

    def appliance(self, *args: str, check: bool = True, timeout: float = STEP_TIMEOUT_S, stdin: str | None = None) -> str:
        cmd = [sys.executable, "-m", "appliance.cli", *args]
        proc = subprocess.run(cmd, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=timeout,
                              input=stdin)
        if check and proc.returncode != 0:
            raise DemoError(f"`appliance {' '.join(args)}` failed (exit {proc.returncode}):\n"
                            f"{proc.stdout}{proc.stderr}")
        return proc.stdout

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log_path = self.work / "logs" / f"{name}.log"
        log_path.parent.mkdir(exist_ok=True)
        out = log_path.open("w")
        proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", *args], cwd=self.work, env=self.env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        self.children.append((name, proc, log_path))
        return proc

    def wait_file(self, path: Path, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return path.read_text().strip()
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise DemoError(f"{what} did not start:\n{self._log_of(proc)}")

    def _log_of(self, proc: subprocess.Popen) -> str:
        for _name, p, log_path in self.children:
            if p is proc:
                return log_path.read_text()[-3000:]
        return ""

    def stop_all(self) -> None:
        for _name, proc, _log in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, _log_path in reversed(self.children):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                say(f"  {name} did not stop within 15 s; killing it (pid {proc.pid})")
                proc.kill()
                proc.wait(timeout=5)
        self.children.clear()

    def step(self, text: str) -> None:
        self.step_no += 1
        say(f"\n[{self.step_no}] {text}  (+{time.monotonic() - self.started:.0f} s)")

    # -- the walk-through ----------------------------------------------------------------

    def run(self, once: bool) -> int:
        for sample in (self.fight, self.hug):
            if not sample.is_file():
                raise DemoError(f"{sample}: sample clip missing (fix: run from a complete checkout)")
        say(f"appliance demo: a station and one box on this machine, loopback only, in {self.work}")

        self.step("Station: generating its keys")
        self.appliance("station", "keygen", "--station-dir", str(self.station))
        say(f"  station keys in {self.station}/keys (private files 0600, never printed)")
        self.appliance("station", "evidence-key", "init", "--station-dir", str(self.station),
                       "--out", str(self.evidence_key))
        say(f"  evidence key: public half in the station's keys, private half only in {self.evidence_key.parent} "
            "(a supervisor's custody; the station key cannot open the full video)")

        self.step("Technician: provisioning the box (init → enrol → station adds it → import)")
        port = _free_port()
        endpoint = f"tcp://127.0.0.1:{port}"
        self.appliance("provision", "init", "--config", str(self.config), "--device-id", DEVICE_ID,
                       "--state-dir", str(self.box / "state"), "--camera", str(self.fight),
                       "--description", "demo: a bundled clip instead of a camera")
        request = self.work / f"{DEVICE_ID}.enrol.json"
        self.appliance("provision", "enrol", "--config", str(self.config), "--out", str(request))
        bundle = self.work / "bundle.json"
        out = self.appliance("station", "devices", "add", str(request), "--station-dir", str(self.station),
                             "--endpoint", endpoint, "--profile", PROFILE, "--out", str(bundle),
                             "--fingerprint", _device_fingerprint(request))
        match = re.search(r"station fingerprint[^:]*:\s*([0-9a-f:]{19})", out)
        if not match:
            raise DemoError(f"`station devices add` printed no station fingerprint:\n{out}")
        station_fp = match.group(1)
        self.appliance("provision", "import", str(bundle), "--config", str(self.config),
                       "--station-fingerprint", station_fp)
        say(f"  box {DEVICE_ID} enrolled; the technician typed the station fingerprint {station_fp}")
        say(f"  legal profile {PROFILE}: fights, strikes, kicks, pushes, strangling may raise an alarm; "
            "falls and lying never do")

        self.step("Station: starting the receiver" + (" and the operator console" if self._console() else ""))
        ready = self.work / "station.ready"
        station_proc = self.start("station", "station", "serve", "--station-dir", str(self.station),
                                  "--bind", endpoint, "--ready-file", str(ready))
        self.wait_file(ready, station_proc, "the station receiver")
        say(f"  receiver listening on {endpoint} (CurveZMQ; only enrolled boxes get in)")
        console_url, login = self._start_console()

        self.step("Box: starting the uplink (the only box process that talks to the network)")
        self.start("uplink", "uplink", "--config", str(self.config))
        say("  uplink connected to the station; it carries only sealed envelopes and signed heartbeats")

        self.step(f"Box: a camera sees a fight ({self.fight.name}, a real CCTV clip; every 0.1 s of it analysed)")
        alarms = self._run_box(self.fight)
        if not alarms:
            raise DemoError(f"the fight clip raised no alarm: the default detector missed {self.fight.name} "
                            "(see logs/box-*.log)")
        for line in self._alarm_lines():
            say(f"  station: {line}")
        clips = self._wait_for_clips(alarms)
        for clip in clips:
            alarm = f"{clip['device_id']}#{clip['sequence']}"
            coverage = ("complete" if clip.get("complete") else
                        f"{clip.get('covered_s', 0):.1f} of the {clip.get('requested_s') or 0:.1f} s the trigger asked for: "
                        "the 2-s sample file has no more video before or after; a live camera gives the full "
                        "pre- and post-roll")
            say(f"  station: sealed clip of alarm {alarm} arrived ({clip['pattern']}, {clip['bytes'] // 1024} KiB, "
                f"{coverage}); the device's signature was checked before it was stored")
        clip = clips[-1]
        export_dir = self.work / "export"
        out = self.appliance("station", "export", clip["clip_id"], str(export_dir), "--station-dir",
                             str(self.station), "--operator", "demo-operator", "--reason",
                             "demo: checking the alarm")
        for line in out.splitlines():
            if line.startswith(("device ", "frames:", "rendition:")):
                say(f"  verification: {line}")
        say(f"  operator demo-operator opened alarm {clip['device_id']}#{clip['sequence']} with a reason "
            f"(recorded in the station's audit log): video with bystanders pixelated in {export_dir}")
        out = self.appliance("station", "export", clip["clip_id"], str(export_dir), "--station-dir",
                             str(self.station), "--operator", "demo-supervisor", "--reason",
                             "demo: case 2026-17, full video approved", "--evidence-key", str(self.evidence_key))
        for line in out.splitlines():
            if line.startswith(("rendition:", "frames:")):
                say(f"  verification: {line}")
        say("  supervisor demo-supervisor opened the full video with the evidence key from custody (audited)")

        self.step(f"Box: the same camera sees two people hug ({self.hug.name})")
        self._use_camera(self.hug)
        alarms = self._run_box(self.hug)
        if alarms:
            raise DemoError(f"the hug raised {alarms} alarm(s): a false alarm")
        time.sleep(1.0)
        n = len(self._clips())
        say(f"  nothing raised: no clip was made, no pixel left the box; the station still holds {n} clip(s)")
        say("  (privacy by design: without a permitted alarm the video never leaves the box's memory)")

        self.step("Data protection officer: verifying both audit logs and writing the report")
        self._audit(station_fp)

        elapsed = time.monotonic() - self.started
        say(f"\nDemo done in {elapsed:.0f} s. Everything is in {self.work}.")
        if console_url:
            say(f"Operator console: {console_url}  (one-time demo login: {login})")
        else:
            say("Operator console: not installed in this version (`appliance station console` is missing).")
        if once:
            return 0
        say("Station, console and uplink keep running; press Ctrl-C to stop.")
        stop = False

        def on_signal(*_):
            nonlocal stop
            stop = True
        signal.signal(signal.SIGTERM, on_signal)
        try:
            while not stop and all(p.poll() is None for _n, p, _l in self.children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        say("\nstopping")
        return 0

    def _console(self) -> bool:
        proc = subprocess.run([sys.executable, "-m", "appliance.cli", "station", "console", "--help"],
                              env=self.env, capture_output=True, text=True, timeout=60)
        return proc.returncode == 0

    def _start_console(self) -> tuple[str | None, str | None]:
        if not self._console():
            say("  (the operator console is not part of this version)")
            return None, None
        console_dir = self.work / "console"
        operator, supervisor = (self._demo_user(console_dir, role) for role in ("operator", "supervisor"))
        login = f"user {operator[0]}, password {operator[1]}"
        # The key ceremony: the evidence key from custody, wrapped under the supervisor's password,
        # so that supervisor's approval opens the full video in the console (docs/console.md).
        self.appliance("station", "console", "evidence-key", "wrap", "--console-dir", str(console_dir), "--key",
                       str(self.evidence_key), "--user", supervisor[0], "--station-dir", str(self.station),
                       stdin=supervisor[1] + "\n")
        ready = self.work / "console.ready"
        proc = self.start("console", "station", "console", "serve", "--station-dir", str(self.station),
                          "--console-dir", str(console_dir), "--bind", "127.0.0.1:0", "--behind-proxy",
                          "--ready-file", str(ready))
        url = self.wait_file(ready, proc, "the operator console")
        say(f"  console on {url}: black until an alarm arrives (one-time demo login: {login})")
        say(f"  a supervisor, who approves requests for the full video with their password (the evidence key is "
            f"wrapped under it in the console): user {supervisor[0]}, password {supervisor[1]}")
        return url, login

    def _demo_user(self, console_dir: Path, role: str) -> tuple[str, str]:
        out = self.appliance("station", "console", "demo-user", "--console-dir", str(console_dir), "--role", role)
        fields = dict(line.split(None, 1) for line in out.splitlines() if len(line.split(None, 1)) == 2)
        return fields.get("user", "?"), fields.get("password", "?")

    def _use_camera(self, video: Path) -> None:
        import tomlkit

        doc = tomlkit.parse(self.config.read_text())
        doc["camera"]["source"] = str(video)
        self.config.write_text(tomlkit.dumps(doc))

    def _run_box(self, video: Path) -> int:
        """`appliance run` until the end of the file; prints its alarms as they happen."""
        log_path = self.work / "logs" / f"box-{video.stem}.log"
        log_path.parent.mkdir(exist_ok=True)
        # --fast: every 0.1 s of the clip is analysed however busy this machine is (a live camera
        # on an overloaded box would skip frames instead; the demo must show the same every time).
        cmd = [sys.executable, "-m", "appliance.cli", "run", "--config", str(self.config), "--fast"]
        alarms = 0
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(cmd, cwd=self.work, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            self.children.append(("box", proc, log_path))
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log_file.write(line)
                    text = line.rstrip()
                    if " ALARM " in text:
                        alarms += 1
                        say("  box: " + text.split(" ALARM ", 1)[1].replace("ALARM ", ""))
                    elif "not permitted by" in text:
                        say("  box: " + text.split(": ", 1)[-1])
                    elif " sealed " in text:
                        say("  box: " + text.split(": ", 1)[-1])
                    elif text.startswith("end of file"):
                        say("  box: " + text)
                proc.wait(timeout=STEP_TIMEOUT_S)
            finally:
                self.children = [c for c in self.children if c[1] is not proc]
        if proc.returncode != 0:
            raise DemoError(f"`appliance run` failed (exit {proc.returncode}):\n{log_path.read_text()[-3000:]}")
        return alarms

    def _alarm_lines(self) -> list[str]:
        """The station receiver's log lines for alarm messages (skeletons only, sent at once,
        ahead of the clip), in plain words; none when this version has no alarm messages."""
        log_path = self.work / "logs" / "station.log"
        out = []
        for line in log_path.read_text().splitlines() if log_path.exists() else []:
            m = re.search(r"alarm (\S+#\d+) stored \((\w+), (\d+) skeleton frames\)", line)
            if m:
                out.append(f"alarm {m.group(1)} arrived at once ({m.group(2)}, {m.group(3)} skeleton frames, no "
                           "pixels): the console shows it; its sealed clip follows")
        return out

    def _clips(self) -> list[dict]:
        out = self.appliance("station", "list", "--station-dir", str(self.station), "--json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def _wait_for_clips(self, count: int) -> list[dict]:
        """The station's clips once ``count`` have arrived (the uplink delivers within seconds)."""
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
        while time.monotonic() < deadline:
            clips = self._clips()
            if len(clips) >= count:
                return sorted(clips, key=lambda c: c["sequence"])
            time.sleep(0.5)
        raise DemoError(f"only {len(self._clips())} of {count} clips reached the station within "
                        f"{ARRIVAL_TIMEOUT_S:.0f} s (uplink log: {self.work / 'logs' / 'uplink.log'})")

    def _audit(self, station_fp: str) -> None:
        box_log = self.box / "state" / "audit" / "audit.jsonl"
        station_log = self.station / "audit.jsonl"
        out = self.appliance("audit", "verify", str(box_log), "--station-dir", str(self.station),
                             "--device", DEVICE_ID, check=False)
        say("  box log:     " + (out.strip().splitlines() or ["(no output)"])[0])
        out = self.appliance("audit", "verify", str(station_log), check=False)
        say("  station log: " + (out.strip().splitlines() or ["(no output)"])[0])
        report = self.work / "audit-report.html"
        logs = [str(box_log), str(station_log)]
        console_log = self.work / "console" / "audit.jsonl"
        if console_log.exists():
            logs.append(str(console_log))
        self.appliance("audit", "report", *logs, "--station-dir", str(self.station), "--format", "html",
                       "-o", str(report))
        say(f"  audit report (who triggered, who viewed which alarm and why, when each clip is deleted): {report}")


def _device_fingerprint(request: Path) -> str:
    """What the station operator compares: the device's signing-key fingerprint the technician reads out."""
    return json.loads(request.read_text())["body"]["fingerprints"]["signing"]


def cmd_demo(args: argparse.Namespace) -> int:
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        if any(args.dir.iterdir()):
            raise DemoError(f"{args.dir} is not empty (fix: give an empty or new directory)")
        work, temporary = args.dir.resolve(), False
    else:
        work, temporary = Path(tempfile.mkdtemp(prefix="appliance-demo-")), True
    demo = Demo(work, args.fight.resolve(), args.hug.resolve())
    try:
        return demo.run(args.once)
    finally:
        demo.stop_all()
        if temporary and not args.keep and args.once:
            shutil.rmtree(work, ignore_errors=True)
            say(f"(--once: removed {work}; add --keep to look at it afterwards)")
        elif temporary:
            say(f"(kept {work}; remove it when done)")
