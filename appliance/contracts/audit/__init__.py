"""Tamper-evident audit logs: hash chain, signed checkpoints, verification, officer's report.

Format: docs/audit-log.md. The pieces other stages use:

    AuditLog(path, signer=key, origin="appliance"|"station", device=id)
        .append(kind, **fields) -> record      durable (fsync), thread- and process-safe
        .checkpoints_since(n, limit=None)      signed checkpoints for the uplink heartbeat
        .maybe_checkpoint() / .checkpoint()    anchor a quiet tail
    verify_log(path, keys, station_checkpoints) -> VerifyResult   (.ok, .first, .problems)
    check_access(operator, reason)             raises AccessRefused without both
"""

from appliance.contracts.audit.log import (
           AccessRefused,
           AuditError,
           AuditLog,
           check_access,
           read_checkpoints,
)
from appliance.contracts.audit.verify import Problem, VerifyResult, verify_log

__all__ = ["AccessRefused", "AuditError", "AuditLog", "Problem", "VerifyResult", "check_access",
           "read_checkpoints", "verify_log"]
