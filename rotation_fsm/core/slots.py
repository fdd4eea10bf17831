"""Slot maths and the gates around it (pure): occupancy, candidate, threshold, margin.

Occupancy is counted in *symbols*, not rows: an open position, a reservation
and an in-flight rotation's close target for the same symbol are one slot.
The close target stays counted until its rotation ends, so a slot freed on the
exchange before the confirmation arrives is kept for the plan waiting on it
(otherwise a third plan could take it and the book would end one over).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence

from .errors import RotationFsmError
from .market import Account, Position
from .regime import Regime
from .settings import Rules


def desired_slots(regime: Regime, rules: Rules) -> int:
    """Slots allowed in `regime`; UNKNOWN gets the CHOP count (the most conservative)."""
    if regime is Regime.TREND_STRONG:
        return rules.slots_trend_strong
    if regime is Regime.BASE:
        return rules.slots_base
    return rules.slots_chop


def occupied(
    open_symbols: Iterable[str], reserved: Iterable[str], rotation_targets: Iterable[str]
) -> frozenset[str]:
    """The symbols that hold a slot right now."""
    return frozenset(open_symbols) | frozenset(reserved) | frozenset(rotation_targets)


def weakest(
    positions: Sequence[Position], now_ms: int, *, excluded: frozenset[str]
) -> Position | None:
    """The weakest open position not in `excluded`; ties go to the lower symbol name."""
    pool = [p for p in positions if p.symbol not in excluded]
    if not pool:
        return None
    return min(pool, key=lambda p: (-p.weakness(now_ms), p.symbol))


def beats_threshold(new: float | None, old: float | None, threshold: float) -> bool:
    """Contract §5: rotate only if the new confidence is ≥ (1 + threshold) × the old.

    Either side missing means there is nothing to compare: the rotation may go on.
    """
    if new is None or old is None:
        return True
    return new >= (1.0 + threshold) * old


def over_margin(account: Account, limit: float) -> bool:
    """True when margin usage is above `limit`."""
    return account.margin_usage > limit


def too_correlated(row: Mapping[str, float | None], limit: float) -> tuple[str, float] | None:
    """The first other symbol (by name) whose returns correlate above `limit`, or None."""
    for symbol in sorted(row):
        value = row[symbol]
        if value is not None and value > limit:
            return symbol, value
    return None


class PolicyError(RotationFsmError, ValueError):
    """The policy hash has no usable universe."""


@functools.lru_cache(maxsize=16)
def parse_universe(raw: bytes | str | None) -> frozenset[str]:
    """Symbols of `universe_symbols`; PolicyError when missing or not a list of strings.

    Cached by the raw text: every plan of a batch (and of the next batches, until
    the policy changes) asks the same question.
    """
    if raw is None or raw in (b"", ""):
        raise PolicyError("universe_symbols is missing")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(f"universe_symbols is not JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise PolicyError("universe_symbols is not a JSON list of strings")
    return frozenset(value)


def close_plan_id_candidates(plan_id: str, close_symbol: str) -> list[str]:
    """The close plan ids a rotation may use, in order (the store looks them up)."""
    short = f"rot_{plan_id[:8]}_{close_symbol}"
    full = f"rot_{plan_id}_{close_symbol}"
    return [short] if full == short else [short, full]


def close_plan_id(
    plan_id: str, close_symbol: str, owners: Mapping[str, str], rotation_id: str, now_ms: int
) -> str:
    """The seed's `rot_{plan_id[:8]}_{symbol}`, unless another rotation already owns it.

    Then the full plan id (contract §3), so a late result of the old rotation can never
    confirm the new one. When that is taken too — a plan id of 8 characters or fewer
    makes both the same — the creation time is appended (an extension).
    """
    for candidate in close_plan_id_candidates(plan_id, close_symbol):
        owner = owners.get(candidate)
        if owner is None or owner == rotation_id:
            return candidate
    return f"rot_{plan_id}_{close_symbol}_{now_ms}"
