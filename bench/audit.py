"""Audit log costs: a durable append (write + fsync per record), verifying a log with its
checkpoints, and building an HTML report.

    .venv/bin/python -m bench audit
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def run() -> list[tuple[str, float, str]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.contracts.audit.log import AuditLog
    from appliance.contracts.audit.verify import verify_log
    from appliance.station.audit.report import build_report, render_html

    rows: list[tuple[str, float, str]] = []
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        log = AuditLog(path, signer=key, device="bench", checkpoint_every=100)
        n = 500
        t0 = time.perf_counter()
        for i in range(n):
            log.append("trigger.permitted", pattern="strike", profile="bw-polg-44-4", rule="patterns.strike",
                       clip_id=f"bench#{i}", envelope_sha256="ab" * 32, confidence=0.9)
        per_append = (time.perf_counter() - t0) / n
        checkpoints = log.checkpoints_since(-1)
        log.close()
        rows.append(("audit_append_fsync", per_append * 1000, "ms/record"))
        rows.append(("audit_appends_per_s", 1 / per_append, "records/s"))
        lines = path.read_bytes().count(b"\n")
        t0 = time.perf_counter()
        result = verify_log(path, [key.public_key()], checkpoints)
        dt = time.perf_counter() - t0
        assert result.ok, result.first
        rows.append(("audit_verify", lines / dt, "records/s"))
        rows.append(("audit_log_bytes_per_record", path.stat().st_size / lines, "B"))
        t0 = time.perf_counter()
        render_html(build_report([path], 0, time.time() + 86400))
        rows.append(("audit_report_html", (time.perf_counter() - t0) * 1000, f"ms for {lines} records"))
    return rows
