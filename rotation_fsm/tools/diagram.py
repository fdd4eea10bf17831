"""Diagrams of the rotation machine, generated from `machine.TRANSITIONS` alone.

`render` gives the whole machine as Mermaid (`stateDiagram-v2`, renders on GitHub),
Graphviz DOT or a self-contained SVG (laid out here: the web console draws it with
no script and no CDN); `render_path` gives the same with one rotation's path
highlighted. Both are plain string building — no graphviz, no GraphMachine — so
the output is byte-identical across runs and machines. The checked-in copies in
`diagrams/` are regenerated with `python -m rotation_fsm.tools.diagram --write diagrams/`.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.machine import FINAL, TRANSITIONS, State

FORMATS = ("mermaid", "dot", "svg")
FILE_NAMES = {"mermaid": "rotation.mmd", "dot": "rotation.dot", "svg": "rotation.svg"}
README_NAME = "README.md"

# Highlight colours: amber for the path taken, red for where the rotation is now.
_PATH_FILL, _PATH_LINE = "#fde68a", "#b45309"
_CURRENT_FILL, _CURRENT_LINE = "#fca5a5", "#b91c1c"
_START = "__start__"  # DOT's initial-state dot; Mermaid spells it [*]

_MERMAID_BLOCK = re.compile(r"```mermaid\n.*?```", re.DOTALL)


@dataclass(frozen=True, order=True)
class Edge:
    """One drawn edge: a trigger from `source` to `dest` under all of `guards`."""

    source: State
    dest: State
    trigger: str
    guards: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """`trigger [guard and guard]`, or the bare trigger when nothing guards it."""
        if not self.guards:
            return self.trigger
        return f"{self.trigger} [{' and '.join(self.guards)}]"


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # a State is a str too
        return [str(value)]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    raise TypeError(f"not a state or condition name: {value!r}")


def _state_rank(state: State) -> int:
    return list(State).index(state)


def table_edges() -> list[Edge]:
    """Every edge of `TRANSITIONS`, one per source, in `State` order.

    A `dest` of None is a reflexive (internal) transition and is drawn as a self-loop.
    `unless` guards are shown negated (`!name`), after the `conditions`.
    """
    out: list[Edge] = []
    for row in TRANSITIONS:
        guards = tuple(_as_list(row.get("conditions")))
        guards += tuple(f"!{name}" for name in _as_list(row.get("unless")))
        for source in _as_list(row["source"]):
            dest = row.get("dest")
            out.append(
                Edge(
                    State(source),
                    State(source if dest is None else str(dest)),
                    str(row["trigger"]),
                    guards,
                )
            )
    return sorted(out, key=lambda e: (_state_rank(e.source), _state_rank(e.dest), e.trigger))


# ---------------------------------------------------------------- highlighting


@dataclass(frozen=True)
class _Marks:
    """What `render_path` highlights; empty for the plain diagram."""

    states: frozenset[State] = frozenset()
    edges: frozenset[Edge] = frozenset()
    current: State | None = None
    from_start: bool = False


def _state(name: str) -> State:
    try:
        return State(name)
    except ValueError:
        known = ", ".join(s.value for s in State)
        raise ValueError(f"unknown state {name!r} (known: {known})") from None


def _hops(edges: list[Edge], start: State, goal: State) -> list[Edge]:
    """The shortest run of ≥1 edges from `start` to `goal` (the first in drawing order on ties).

    Persisted histories may skip a state the machine passes through in one commit
    (IDLE → CLOSE_EMITTED skips LOCKED): the hops fill it back in.
    """
    queue: deque[tuple[State, list[Edge]]] = deque([(start, [])])
    seen: set[State] = set()
    while queue:
        state, run = queue.popleft()
        for edge in edges:
            if edge.source != state:
                continue
            if edge.dest == goal:
                return [*run, edge]
            if edge.dest not in seen:
                seen.add(edge.dest)
                queue.append((edge.dest, [*run, edge]))
    raise ValueError(f"no transition leads from {start.value!r} to {goal.value!r}")


def _marks(path: Sequence[str], current: str) -> _Marks:
    states = [_state(name) for name in path]
    now = _state(current)
    edges = table_edges()
    marked: set[Edge] = set()
    for here, there in itertools.pairwise(states):
        marked.update(_hops(edges, here, there))
    touched = {*states, *(e.source for e in marked), *(e.dest for e in marked)}
    return _Marks(
        states=frozenset(touched - {now}),
        edges=frozenset(marked),
        current=now,
        from_start=bool(states) and states[0] is State.IDLE,
    )


# ---------------------------------------------------------------- mermaid


def _mermaid(marks: _Marks) -> str:
    lines = ["stateDiagram-v2", "    [*] --> IDLE"]
    lines += [f"    {e.source.value} --> {e.dest.value}: {e.label}" for e in table_edges()]
    lines += [f"    {s.value} --> [*]" for s in State if s in FINAL]
    if marks.current is not None:
        # stateDiagram-v2 cannot style edges, so the path shows as its states.
        lines += [
            f"    classDef onpath fill:{_PATH_FILL},stroke:{_PATH_LINE},stroke-width:2px",
            f"    classDef current fill:{_CURRENT_FILL},stroke:{_CURRENT_LINE},stroke-width:3px",
        ]
        lines += [f"    class {s.value} onpath" for s in State if s in marks.states]
        lines.append(f"    class {marks.current.value} current")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- dot


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(pairs: Iterable[tuple[str, str]]) -> str:
    body = ", ".join(f"{key}={value}" for key, value in pairs)
    return f" [{body}]" if body else ""


def _dot_node(state: State, marks: _Marks) -> str:
    pairs = [("shape", "doublecircle")] if state in FINAL else []
    if state is marks.current:
        pairs += [
            ("style", "filled"),
            ("fillcolor", _quote(_CURRENT_FILL)),
            ("color", _quote(_CURRENT_LINE)),
            ("penwidth", "3"),
        ]
    elif state in marks.states:
        pairs += [
            ("style", "filled"),
            ("fillcolor", _quote(_PATH_FILL)),
            ("color", _quote(_PATH_LINE)),
            ("penwidth", "2"),
        ]
    return f"    {_quote(state.value)}{_attrs(pairs)};"


def _dot_edge(source: str, dest: str, label: str, marked: bool) -> str:
    pairs = [("label", _quote(label))] if label else []
    if marked:
        pairs += [
            ("color", _quote(_PATH_LINE)),
            ("fontcolor", _quote(_PATH_LINE)),
            ("penwidth", "2.5"),
            ("style", "bold"),
        ]
    return f"    {source} -> {dest}{_attrs(pairs)};"


def _dot(marks: _Marks) -> str:
    lines = [
        "digraph rotation {",
        "    rankdir=LR;",
        '    node [shape=circle, fontname="Helvetica", fontsize=10];',
        '    edge [fontname="Helvetica", fontsize=9];',
        f'    {_START} [shape=point, width=0.15, label=""];',
    ]
    lines += [_dot_node(s, marks) for s in State]
    lines.append(_dot_edge(_START, _quote(State.IDLE.value), "", marks.from_start))
    lines += [
        _dot_edge(_quote(e.source.value), _quote(e.dest.value), e.label, e in marks.edges)
        for e in table_edges()
    ]
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- svg

_BOX_W, _BOX_H, _COL_W, _ROW_H, _PAD = 150, 40, 210, 78, 24
# Presentation attributes, not <style>: a page with a strict CSP (style-src 'self')
# still draws them, and its stylesheet may override them by class.
_TEXT = 'font-family="Helvetica, Arial, sans-serif" font-size="10" fill="#334155"'


def _columns() -> dict[State, int]:
    """Each state's column: its longest distance from IDLE (self-loops ignored), so
    every edge runs left to right and the final states share the last column."""
    rank = dict.fromkeys(State, 0)
    for _ in State:  # longest path in a DAG: relax |V| times
        for e in table_edges():
            if e.source != e.dest:
                rank[e.dest] = max(rank[e.dest], rank[e.source] + 1)
    return rank


def _layout() -> dict[State, tuple[float, float]]:
    """Top-left corner of each state's box; a column's boxes are centred vertically."""
    cols = _columns()
    tallest = max(sum(1 for c in cols.values() if c == col) for col in set(cols.values()))
    out: dict[State, tuple[float, float]] = {}
    for col in sorted(set(cols.values())):
        members = [s for s in State if cols[s] == col]
        top = _PAD + 22 + (tallest - len(members)) * _ROW_H / 2
        for i, state in enumerate(members):
            out[state] = (_PAD + col * _COL_W, top + i * _ROW_H)
    return out


def _svg_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_Spot = dict[State, tuple[float, float]]


def _svg_path(edge: Edge, at: _Spot, floor: float) -> tuple[str, float, float, str]:
    """The edge's path, and where its label goes (x, y, anchor)."""
    sx, sy = at[edge.source]
    if edge.source == edge.dest:  # a loop over the top of the box
        x0, x1 = sx + _BOX_W * 0.3, sx + _BOX_W * 0.7
        d = f"M{x0:.0f},{sy:.0f} C{x0:.0f},{sy - 34:.0f} {x1:.0f},{sy - 34:.0f} {x1:.0f},{sy:.0f}"
        return d, sx + _BOX_W * 0.7 + 6, sy - 22, "start"
    dx, dy = at[edge.dest]
    x0, y0 = sx + _BOX_W, sy + _BOX_H / 2
    x1, y1 = dx, dy + _BOX_H / 2
    if dx - sx > _COL_W:  # skips a column: round under the boxes between
        bend = f"C{x0 + 60:.0f},{floor:.0f} {x1 - 90:.0f},{floor:.0f}"
        d = f"M{x0:.0f},{y0:.0f} {bend} {x1:.0f},{y1:.0f}"
        return d, x1 - 12, y1 + 16, "end"
    mid = (x0 + x1) / 2
    d = f"M{x0:.0f},{y0:.0f} C{mid:.0f},{y0:.0f} {mid:.0f},{y1:.0f} {x1:.0f},{y1:.0f}"
    return d, x1 - 8, y1 - 6, "end"


def _svg_edges(marks: _Marks, at: _Spot, floor: float) -> list[str]:
    """Every edge; a label two edges into one state share is written once."""
    out: list[str] = []
    labelled: set[tuple[State, str]] = set()
    for edge in table_edges():
        marked = edge in marks.edges
        css = "edge onpath" if marked else "edge"
        line = _PATH_LINE if marked else "#475569"
        paint = f'fill="none" stroke="{line}" stroke-width="{2.5 if marked else 1.2}"'
        d, lx, ly, anchor = _svg_path(edge, at, floor)
        out.append(f'<path class="{css}" d="{d}" {paint} marker-end="url(#arrow)"/>')
        if (edge.dest, edge.label) in labelled:
            continue
        labelled.add((edge.dest, edge.label))
        out.append(
            f'<text class="label" x="{lx:.0f}" y="{ly:.0f}" text-anchor="{anchor}" {_TEXT}>'
            f"{_svg_escape(edge.label)}</text>"
        )
    return out


def _svg_paint(state: State, marks: _Marks) -> tuple[str, str, float]:
    if state is marks.current:
        return _CURRENT_FILL, _CURRENT_LINE, 3
    if state in marks.states:
        return _PATH_FILL, _PATH_LINE, 2
    return "#f8fafc", "#475569", 1.2


def _svg(marks: _Marks) -> str:
    """States as boxes (finals with a double border), edges with their trigger and
    guards; classes `state`, `final`, `onpath`, `current`, `edge` for a stylesheet."""
    at = _layout()
    floor = max(y for _, y in at.values()) + _BOX_H + 14  # where skipping edges run
    width = max(x for x, _ in at.values()) + _BOX_W + _PAD + 230  # loop labels go right
    height = floor + _PAD
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="machine" viewBox="0 0 {width:.0f} '
        f'{height:.0f}" width="{width:.0f}" height="{height:.0f}" role="img" '
        'aria-label="rotation state machine">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" '
        'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#475569"/></marker>'
        "</defs>",
    ]
    out += _svg_edges(marks, at, floor)
    for state in State:
        x, y = at[state]
        css = ["state"]
        css += ["final"] if state in FINAL else []
        css += ["current"] if state is marks.current else []
        css += ["onpath"] if state in marks.states else []
        out.append(f'<g class="{" ".join(css)}" data-state="{state.value}">')
        fill, line, width = _svg_paint(state, marks)
        box = f'fill="{fill}" stroke="{line}" stroke-width="{width}"'
        out.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{_BOX_W}" height="{_BOX_H}" rx="8" {box}/>'
        )
        if state in FINAL:
            out.append(
                f'<rect class="inner" x="{x + 3:.0f}" y="{y + 3:.0f}" width="{_BOX_W - 6}" '
                f'height="{_BOX_H - 6}" rx="6" fill="none" stroke="{line}" stroke-width="1"/>'
            )
        out.append(
            f'<text x="{x + _BOX_W / 2:.0f}" y="{y + _BOX_H / 2 + 4:.0f}" '
            'text-anchor="middle" font-family="Helvetica, Arial, sans-serif" font-size="12" '
            f'font-weight="600" fill="#0f172a">{state.value}</text>'
        )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- public


def _draw(fmt: str, marks: _Marks) -> str:
    if fmt == "mermaid":
        return _mermaid(marks)
    if fmt == "dot":
        return _dot(marks)
    if fmt == "svg":
        return _svg(marks)
    raise ValueError(f"unknown diagram format {fmt!r} (known: {', '.join(FORMATS)})")


def render(fmt: str) -> str:
    """The whole machine as `fmt` ("mermaid" or "dot"); the same bytes on every call.

    Raises ValueError for any other format.
    """
    return _draw(fmt, _Marks())


def render_path(fmt: str, path: list[str], current: str) -> str:
    """`render(fmt)` with a rotation's `path` (state names, oldest first) highlighted.

    States on the path and the edges between consecutive ones are marked (Mermaid
    marks states only: its state diagrams cannot style edges); `current` is marked
    apart. Consecutive states with no direct edge are joined by the shortest run of
    edges, so a history written as IDLE → CLOSE_EMITTED shows LOCKED too. Raises
    ValueError for an unknown format or state, or a pair no transitions connect.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown diagram format {fmt!r} (known: {', '.join(FORMATS)})")
    return _draw(fmt, _marks(path, current))


def readme_with_diagram(readme: str) -> str:
    """`readme` with its first ```mermaid block replaced by `render("mermaid")`."""
    block = "```mermaid\n" + render("mermaid") + "```"
    updated, count = _MERMAID_BLOCK.subn(lambda _: block, readme, count=1)
    if count == 0:
        raise ValueError("no ```mermaid block to replace")
    return updated


def write(directory: Path) -> list[Path]:
    """Write both diagram files into `directory`, and the Mermaid block of its README.md
    if there is one; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in FORMATS:
        target = directory / FILE_NAMES[fmt]
        target.write_text(render(fmt), encoding="utf-8", newline="\n")
        written.append(target)
    readme = directory / README_NAME
    if readme.exists():
        readme.write_text(
            readme_with_diagram(readme.read_text(encoding="utf-8")),
            encoding="utf-8",
            newline="\n",
        )
        written.append(readme)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m rotation_fsm.tools.diagram [--format F] [--write DIR]`; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m rotation_fsm.tools.diagram", description=__doc__
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="mermaid", help="print this format (default: mermaid)"
    )
    parser.add_argument(
        "--write",
        metavar="DIR",
        type=Path,
        help="write rotation.mmd, rotation.dot, rotation.svg and README.md's diagram in DIR",
    )
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(render(args.format))
        return 0
    for path in write(args.write):
        print(f"wrote {path}")
    return 0


def command(args: argparse.Namespace) -> int:
    """`rotation-fsm diagram --format mermaid|dot|svg`."""
    sys.stdout.write(render(args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
