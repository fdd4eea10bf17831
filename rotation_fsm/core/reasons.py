"""Decision verdicts, block/allow reasons and event names (contract §3): spelled once."""

ALLOW = "ALLOW"
BLOCK = "BLOCK"

# ALLOW reasons
SLOTS_AVAILABLE = "slots_available"
SLOT_ALREADY_HELD = "slot_already_held"
ROTATION_COMPLETE = "rotation_complete"
CLOSE_EXEMPT = "close_exempt"
SLOTS_DISABLED = "slots_disabled"

# BLOCK reasons (seed)
NO_POLICY = "active_slots_no_policy"
NOT_IN_UNIVERSE = "active_slots_not_in_universe"
WAITING_ROTATION_CLOSE = "active_slots_waiting_rotation_close"
ROTATION_TIMEOUT = "active_slots_rotation_timeout"
# BLOCK reasons (extensions)
POSITIONS_UNAVAILABLE = "active_slots_positions_unavailable"
ROTATION_IN_PROGRESS = "active_slots_rotation_in_progress"
NO_ROTATION_CANDIDATE = "active_slots_no_rotation_candidate"
ROTATION_CLOSE_REJECTED = "active_slots_rotation_close_rejected"
ROTATION_ABORTED = "active_slots_rotation_aborted"
CORRELATION_TOO_HIGH = "active_slots_correlation_too_high"
MARGIN_CAP = "active_slots_margin_cap"
PAUSED = "active_slots_paused"
INVALID_QTY = "active_slots_invalid_qty"
EXCHANGE_STALE = "active_slots_exchange_stale"

# Events
EV_LOCK_CREATED = "ROTATION_LOCK_CREATED"
EV_COMPLETE = "ROTATION_COMPLETE"
EV_TIMEOUT = "ROTATION_TIMEOUT"
EV_CLOSE_REJECTED = "ROTATION_CLOSE_REJECTED"
EV_LATE_CONFIRM = "ROTATION_LATE_CONFIRM"
EV_ABORTED = "ROTATION_ABORTED"
EV_DEADLINE_CHANGED = "ROTATION_DEADLINE_CHANGED"

# BLOCKs a plan id keeps for good: a resend gets the same answer (contract §3a). The
# others come from a passing condition and are decided afresh.
FINAL_BLOCKS = frozenset(
    {ROTATION_TIMEOUT, ROTATION_CLOSE_REJECTED, ROTATION_ABORTED, NO_POLICY, NOT_IN_UNIVERSE}
)


def is_final(decision: str, reason: str) -> bool:
    """A verdict the engine never changes for that plan id: every ALLOW, and the
    final BLOCKs."""
    return decision == ALLOW or reason in FINAL_BLOCKS
