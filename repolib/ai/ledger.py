"""Rates and budgets in the catalog: reserve before the call, settle after it.

A reservation (prompt estimate + max tokens * n) is checked against and added to the same ledger
row in one step (``Tx.ledger_reserve``: SQLite's one writer, PostgreSQL's conditional upsert), so
parallel calls from any number of processes or machines cannot overspend by more than what is in
flight. Settling replaces the reservation by the reported
usage; a stream cut before its usage chunk keeps the reservation.
"""

from __future__ import annotations

import dataclasses

from ..catalog import Store
from ..exceptions import BudgetExceeded, RateLimited
from ..info import iso
from ..keys import AIPolicy
from .policy import period_key


@dataclasses.dataclass
class Reservation:
    key_id: str
    period: str | None
    tokens: int
    settled: bool = False


def reserve(
    store: Store, key_id: str, policy: AIPolicy, tokens: int, now: float
) -> Reservation | None:
    """Take one request from the rate limit and ``tokens`` from the budget, or refuse."""
    if policy.rpm is None and policy.token_budget is None:
        return None
    with store.write() as tx:
        if policy.rpm is not None:
            minute = int(now // 60)
            if not tx.rate_take(key_id, minute, policy.rpm):
                raise RateLimited(
                    f"rate limit reached: {policy.rpm} requests per minute for this key; "
                    f"resets in {60 - int(now % 60)} s",
                    retry_after=60 - now % 60,
                )
        if policy.token_budget is None:
            return Reservation(key_id, None, 0)
        period, resets = period_key(policy.budget_period, now)
        if not tx.ledger_reserve(key_id, period, tokens, policy.token_budget):
            used = tx.ledger_get(key_id, period)
            raise BudgetExceeded(
                f"token budget exhausted: {policy.token_budget} tokens per "
                f"{policy.budget_period}, {used:.0f} used, this request may need {tokens}; "
                f"resets at {iso(resets)}",
                retry_after=max(0.0, resets - now),
            )
    return Reservation(key_id, period, tokens)


def settle(store: Store, res: Reservation | None, actual: int | None) -> None:
    """Replace the reservation by the actual tokens (None: keep the reservation)."""
    if res is None or res.settled or res.period is None:
        return
    res.settled = True
    if actual is None or actual == res.tokens:
        return
    with store.write() as tx:
        tx.ledger_add(res.key_id, res.period, actual - res.tokens)


def used(store: Store, key_id: str, policy: AIPolicy, now: float) -> float:
    period, _ = period_key(policy.budget_period, now)
    with store.read() as tx:
        return tx.ledger_get(key_id, period)
