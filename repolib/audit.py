"""The audit trail: append-only events in a hash chain, sealed with the admin secret.

Each row carries the hash of the previous one and is appended in the same transaction as the
change it records. A checkpoint (row count, head hash) with a MAC under the admin secret is
written by every admin-secret operation and by ``repolib audit --seal``. ``verify`` recomputes the
chain and checks that it extends the last sealed checkpoint, so an edited, deleted or truncated
row before that seal is found. What it cannot find: changes after the last seal by someone who can
write the catalog, or the removal of whole seals (keep the printed checkpoint to check that).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

from . import crypto
from .catalog import AuditRow, SealRow, Tx

DENIAL_INTERVAL_S = 60.0
_denials: dict[tuple[str, str, str], float] = {}
_denials_lock = threading.Lock()


def _row_bytes(
    seq: int,
    ts: float,
    repo: str | None,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any],
) -> bytes:
    return json.dumps(
        [seq, repr(ts), repo, actor, action, target, detail], sort_keys=True, separators=(",", ":")
    ).encode()


def _hash(prev: bytes, payload: bytes) -> bytes:
    return crypto.sha256(prev + payload)


def append(
    tx: Tx,
    *,
    actor: str,
    action: str,
    target: str,
    repo: str | None = None,
    detail: dict[str, Any] | None = None,
    now: float | None = None,
) -> AuditRow:
    """Append one event inside the caller's transaction."""
    ts = time.time() if now is None else now
    detail = detail or {}
    seq, prev = tx.audit_head()
    seq += 1
    h = _hash(prev, _row_bytes(seq, ts, repo, actor, action, target, detail))
    row = AuditRow(seq, ts, repo, actor, action, target, detail, prev, h)
    tx.audit_insert(row)
    return row


def should_record_denial(actor: str, action: str, target: str, now: float | None = None) -> bool:
    """Denials are rate-limited per (actor, action, target) so a loop cannot flood the log."""
    t = time.monotonic() if now is None else now
    k = (actor, action, target)
    with _denials_lock:
        last = _denials.get(k)
        if last is not None and t - last < DENIAL_INTERVAL_S:
            return False
        _denials[k] = t
        return True


def _seal_message(seq: int, row_count: int, head_hash: bytes) -> bytes:
    return b"repolib-audit-seal|%d|%d|" % (seq, row_count) + head_hash


def seal(tx: Tx, admin_secret: bytes, now: float | None = None) -> SealRow:
    """Write a checkpoint of the chain as it is in this transaction."""
    count, head = tx.audit_head()
    last = tx.seal_last()
    seq = (last.seq if last else 0) + 1
    mac = crypto.audit_mac(admin_secret, _seal_message(seq, count, head))
    row = SealRow(seq, time.time() if now is None else now, count, head, mac)
    tx.seal_insert(row)
    return row


def remac(tx: Tx, old_secret: bytes, new_secret: bytes) -> None:
    """Re-MAC every valid seal under a new admin secret (admin rotation)."""
    for s in tx.seals():
        if crypto.audit_mac_ok(old_secret, _seal_message(s.seq, s.row_count, s.head_hash), s.mac):
            tx.seal_replace_mac(
                s.seq, crypto.audit_mac(new_secret, _seal_message(s.seq, s.row_count, s.head_hash))
            )


@dataclasses.dataclass
class Verification:
    ok: bool
    rows: int
    sealed_rows: int | None
    problems: list[str]
    seal_checked: bool

    def summary(self) -> str:
        if self.ok:
            sealed = (
                f"; extends the checkpoint at row {self.sealed_rows}"
                if self.sealed_rows is not None
                else "; no sealed checkpoint yet"
            )
            if not self.seal_checked and self.sealed_rows is not None:
                sealed += " (MAC not checked: no admin secret here)"
            return f"audit chain intact: {self.rows} rows{sealed}"
        return "audit chain BROKEN: " + "; ".join(self.problems)


def verify(tx: Tx, admin_secret: bytes | None) -> Verification:
    rows = tx.audit_rows()
    problems: list[str] = []
    prev = b""
    hashes: dict[int, bytes] = {}
    for i, r in enumerate(rows, start=1):
        if r.seq != i:
            problems.append(f"row {i} is missing (found row {r.seq} in its place)")
            break
        if r.prev_hash != prev:
            problems.append(f"row {r.seq} does not follow row {r.seq - 1}")
            break
        expect = _hash(prev, _row_bytes(r.seq, r.ts, r.repo, r.actor, r.action, r.target, r.detail))
        if not crypto.equal(expect, r.hash):
            problems.append(f"row {r.seq} was altered")
            break
        hashes[r.seq] = r.hash
        prev = r.hash
    seals = tx.seals()
    sealed_rows = None
    checked = False
    if seals:
        last = seals[-1]
        if admin_secret is not None:
            checked = True
            msg = _seal_message(last.seq, last.row_count, last.head_hash)
            if not crypto.audit_mac_ok(admin_secret, msg, last.mac):
                problems.append(f"checkpoint {last.seq} has a bad MAC (forged or altered)")
        sealed_rows = last.row_count
        if last.row_count > len(rows):
            problems.append(
                f"the chain has {len(rows)} rows but checkpoint {last.seq} sealed "
                f"{last.row_count}: rows were deleted"
            )
        elif last.row_count and hashes.get(last.row_count) != last.head_hash and not problems:
            problems.append(f"row {last.row_count} does not match checkpoint {last.seq}")
    return Verification(not problems, len(rows), sealed_rows, problems, checked)
