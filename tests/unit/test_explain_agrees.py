"""`explain` tells the gate the core applied: the same inputs to both, for every reason.

Each case sets up a book, then one OPEN (or close) plan is decided by the core
(`MemoryBook.feed`, as the engine would) and, on a copy of the same view and market,
told by `explain.plan_facts` (as `explain` and the console do). They must agree on
the verdict, the reason and, when the plan rotates, the position it closes.
"""

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from rotation_fsm.core import reasons as R
from rotation_fsm.core.decide import PlanIn, gate, start_batch
from rotation_fsm.core.memory import MemoryBook
from rotation_fsm.core.messages import Plan
from rotation_fsm.core.settings import Rules
from rotation_fsm.core.snapshot import Market
from rotation_fsm.tools.explain import plan_facts
from tests.stubs import NOW_MS, UNIVERSE, book_of, exchange_down, market, plan, position, rules


@dataclass
class Case:
    """A book made ready, and the plan, market and rules it is asked about."""

    plan: Plan
    market: Market
    rules: Rules = field(default_factory=rules)
    before: Callable[[MemoryBook], None] = lambda book: None
    policy: str | None = json.dumps(UNIVERSE)


def _rotating(n: int = 3, **rl: object) -> Callable[[MemoryBook], None]:
    """A book of `n` positions on `n` slots where NEWUSDT started a rotation."""

    def before(book: MemoryBook) -> None:
        book.feed(
            [PlanIn("1-0", plan("a1b2c3d4e5f67890", "NEWUSDT"))],
            market(*book_of(n)),
            rules(**rl),
            NOW_MS - 1000,
        )

    return before


# A rotation waits to open NEWUSDT while NEWUSDT already shows open and is the weakest
# position: the core never closes it; explain once named it as the close candidate.
WAITING_SYMBOL_OPEN = market(*book_of(3), position("NEWUSDT", -0.5))

CASES: dict[str, Case] = {
    R.SLOTS_AVAILABLE: Case(plan(), market(*book_of(2))),
    R.SLOT_ALREADY_HELD: Case(plan(symbol=book_of(1)[0].symbol), market(*book_of(3))),
    R.CLOSE_EXEMPT: Case(plan(action="FULL_CLOSE_PROPOSED"), market(*book_of(3))),
    R.SLOTS_DISABLED: Case(plan(), market(*book_of(3)), rules(slots_enabled=False)),
    R.PAUSED: Case(plan(), market(*book_of(3)), rules(entries_paused=True)),
    R.NO_POLICY: Case(plan(), market(*book_of(2)), policy=None),
    R.NOT_IN_UNIVERSE: Case(plan(symbol="ZZZUSDT"), market(*book_of(2))),
    R.INVALID_QTY: Case(plan(qty=0.0), market(*book_of(2))),
    R.POSITIONS_UNAVAILABLE: Case(plan(), exchange_down()),
    R.EXCHANGE_STALE: Case(
        plan(), Market(positions=None, positions_error="view 2500 ms old", stale=True)
    ),
    R.MARGIN_CAP: Case(plan(), market(*book_of(2), usage=0.9)),
    R.CORRELATION_TOO_HIGH: Case(
        plan(),
        market(*book_of(2), correlations={"NEWUSDT": {book_of(1)[0].symbol: 0.95}}),
        rules(max_correlation=0.8),
    ),
    R.WAITING_ROTATION_CLOSE: Case(plan(), market(*book_of(3))),
    R.NO_ROTATION_CANDIDATE: Case(plan(), market(), rules(slots_chop=0)),
    R.ROTATION_IN_PROGRESS: Case(
        plan("b2c3d4e5f6a78901", "BNBUSDT"), market(*book_of(3)), before=_rotating()
    ),
    "a symbol a rotation waits to open is no candidate": Case(
        plan("b2c3d4e5f6a78901", "BNBUSDT"),
        WAITING_SYMBOL_OPEN,
        rules(slots_chop=4, max_concurrent_rotations=2),
        before=_rotating(max_concurrent_rotations=2),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_explain_tells_the_gate_the_core_applied(case: Case) -> None:
    book = MemoryBook()
    book.view.policy_raw = case.policy
    case.before(book)
    told_view = copy.deepcopy(book.view)
    told_market, _ = start_batch(told_view, case.market, case.rules, NOW_MS)
    told = plan_facts(case.plan, told_view, told_market, case.rules, NOW_MS)

    book.feed([PlanIn(f"{NOW_MS}-0", case.plan)], case.market, case.rules, NOW_MS)
    decided = book.last_decision(case.plan.plan_id)

    assert (told["verdict"], told["check"]) == (decided.decision, decided.reason)
    assert told["desired_slots"] == decided.desired_slots or not decided.regime
    if decided.rotation_id and decided.reason == R.WAITING_ROTATION_CLOSE:
        closed = book.view.rotations[decided.rotation_id].close_symbol
        assert told["candidate"]["symbol"] == closed


def test_every_reason_a_plan_can_get_is_covered() -> None:
    plan_reasons = {
        getattr(R, name)
        for name in dir(R)
        if name.isupper() and isinstance(getattr(R, name), str) and not name.startswith("EV_")
    } - {R.ALLOW, R.BLOCK}
    # given only at a rotation's end or to a resend of a final answer
    not_from_the_gate = {
        R.ROTATION_COMPLETE,
        R.ROTATION_TIMEOUT,
        R.ROTATION_CLOSE_REJECTED,
        R.ROTATION_ABORTED,
    }
    missing = plan_reasons - not_from_the_gate - set(CASES)
    assert not missing, f"add a case to CASES for each new reason: {sorted(missing)}"


def test_the_gate_leaves_the_view_as_it_was() -> None:
    book = MemoryBook()
    book.view.policy_raw = json.dumps(UNIVERSE)
    before = copy.deepcopy(book.view)
    gate(plan(), book.view, market(*book_of(3)), rules(), NOW_MS)
    book.view.forget_derived()
    assert book.view.__dict__ == before.__dict__
