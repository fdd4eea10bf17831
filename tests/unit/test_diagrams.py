"""The diagrams: generated from the machine, checked in as generated, renderable."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rotation_fsm.core.machine import FINAL, State, edges
from rotation_fsm.tools import diagram

DIAGRAMS = Path(__file__).resolve().parents[2] / "diagrams"
REGENERATE = "regenerate with: python -m rotation_fsm.tools.diagram --write diagrams/"
FORMATS = ["mermaid", "dot", "svg"]


def _mermaid_blocks(markdown: str) -> list[str]:
    return re.findall(r"```mermaid\n(.*?)```", markdown, re.DOTALL)


def _mermaid_edges(text: str) -> set[tuple[str, str, str]]:
    found = re.findall(r"^ +(\w+) --> (\w+): (\w+)", text, re.MULTILINE)
    return {(trigger, source, dest) for source, dest, trigger in found}


def _dot_edges(text: str) -> set[tuple[str, str, str]]:
    found = re.findall(r'^ +"(\w+)" -> "(\w+)" \[label="(\w+)', text, re.MULTILINE)
    return {(trigger, source, dest) for source, dest, trigger in found}


def _dot_node_line(text: str, state: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(f'"{state}"'))


def _dot_edge_line(text: str, source: str, dest: str) -> str:
    prefix = f'"{source}" -> "{dest}"'
    return next(line for line in text.splitlines() if line.strip().startswith(prefix))


@pytest.mark.parametrize("fmt", FORMATS)
def test_checked_in_file_is_what_render_generates(fmt):
    path = DIAGRAMS / diagram.FILE_NAMES[fmt]
    assert path.exists(), f"{path} is missing; {REGENERATE}"
    assert path.read_text(encoding="utf-8") == diagram.render(fmt), f"{path} is stale; {REGENERATE}"


def test_readme_mermaid_block_is_rotation_mmd():
    blocks = _mermaid_blocks((DIAGRAMS / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 1, "diagrams/README.md should embed exactly one ```mermaid block"
    assert blocks[0] == (DIAGRAMS / "rotation.mmd").read_text(encoding="utf-8"), (
        f"the diagram in diagrams/README.md is stale; {REGENERATE}"
    )


def test_every_machine_edge_is_drawn_in_mermaid():
    assert _mermaid_edges(diagram.render("mermaid")) == set(edges())


def test_every_machine_edge_is_drawn_in_dot():
    assert _dot_edges(diagram.render("dot")) == set(edges())


def test_guards_are_on_the_edge_labels():
    for text in (diagram.render("mermaid"), diagram.render("dot")):
        assert "timeout [deadline_passed]" in text
        assert "confirm [close_executed]" in text
        assert "late_confirm [close_executed and not_yet_late_confirmed]" in text


def test_reflexive_edges_are_self_loops():
    mermaid, dot = diagram.render("mermaid"), diagram.render("dot")
    for trigger, state in [
        ("extend", "CLOSE_EMITTED"),
        ("late_confirm", "TIMED_OUT"),
        ("late_confirm", "ABORTED"),
    ]:
        assert any(
            line.startswith(f"    {state} --> {state}: {trigger}") for line in mermaid.splitlines()
        )
        assert f'label="{trigger}' in _dot_edge_line(dot, state, state)


def test_idle_is_initial_and_final_states_are_marked():
    mermaid, dot = diagram.render("mermaid"), diagram.render("dot")
    lines = mermaid.splitlines()
    assert "    [*] --> IDLE" in lines
    assert {line.split()[0] for line in lines if line.endswith("--> [*]")} == set(FINAL)
    assert '__start__ -> "IDLE";' in dot
    for state in State:
        assert ("doublecircle" in _dot_node_line(dot, state)) == (state in FINAL)


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_is_deterministic_across_processes(fmt):
    code = (
        "import sys; from rotation_fsm.tools.diagram import render; "
        f"sys.stdout.write(render({fmt!r}))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=DIAGRAMS.parent,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert runs == {diagram.render(fmt).encode()}


def test_render_path_marks_mermaid_states():
    text = diagram.render_path("mermaid", ["IDLE", "LOCKED", "CLOSE_EMITTED"], "CLOSE_EMITTED")
    lines = text.splitlines()
    assert text.startswith(diagram.render("mermaid"))
    assert "    class IDLE onpath" in lines
    assert "    class LOCKED onpath" in lines
    assert "    class CLOSE_EMITTED current" in lines
    assert not any(line.startswith("    class CONFIRMED") for line in lines)
    assert sum(line.startswith("    classDef ") for line in lines) == 2


def test_render_path_marks_dot_nodes_and_edges():
    text = diagram.render_path("dot", ["IDLE", "LOCKED", "CLOSE_EMITTED", "CONFIRMED"], "CONFIRMED")
    for state in ("IDLE", "LOCKED", "CLOSE_EMITTED"):
        assert "#fde68a" in _dot_node_line(text, state)
    assert "#fca5a5" in _dot_node_line(text, "CONFIRMED")
    assert "filled" not in _dot_node_line(text, "TIMED_OUT")
    for source, dest in [
        ("IDLE", "LOCKED"),
        ("LOCKED", "CLOSE_EMITTED"),
        ("CLOSE_EMITTED", "CONFIRMED"),
    ]:
        assert "style=bold" in _dot_edge_line(text, source, dest)
    assert "style=bold" not in _dot_edge_line(text, "CLOSE_EMITTED", "TIMED_OUT")
    assert "style=bold" in next(line for line in text.splitlines() if "__start__ ->" in line)


def test_render_path_fills_in_the_transient_locked_state():
    # A stored history may go IDLE → CLOSE_EMITTED: lock and emit_close commit together.
    text = diagram.render_path("dot", ["IDLE", "CLOSE_EMITTED"], "CLOSE_EMITTED")
    assert "#fde68a" in _dot_node_line(text, "LOCKED")
    assert "style=bold" in _dot_edge_line(text, "IDLE", "LOCKED")
    assert "style=bold" in _dot_edge_line(text, "LOCKED", "CLOSE_EMITTED")


def test_render_path_marks_a_self_loop():
    text = diagram.render_path("dot", ["CLOSE_EMITTED", "TIMED_OUT", "TIMED_OUT"], "TIMED_OUT")
    assert "style=bold" in _dot_edge_line(text, "TIMED_OUT", "TIMED_OUT")
    assert "style=bold" not in _dot_edge_line(text, "ABORTED", "ABORTED")


def test_render_path_is_deterministic():
    path = ["IDLE", "LOCKED", "CLOSE_EMITTED", "TIMED_OUT"]
    for fmt in FORMATS:
        assert diagram.render_path(fmt, path, "TIMED_OUT") == diagram.render_path(
            fmt, list(path), "TIMED_OUT"
        )


@pytest.mark.parametrize("fmt", ["png", "", "Mermaid", "graphviz"])
def test_unknown_format_raises(fmt):
    with pytest.raises(ValueError, match=repr(fmt)):
        diagram.render(fmt)
    with pytest.raises(ValueError, match=repr(fmt)):
        diagram.render_path(fmt, ["IDLE"], "IDLE")


def test_render_path_rejects_an_unknown_state():
    with pytest.raises(ValueError, match="'PENDING'"):
        diagram.render_path("mermaid", ["IDLE", "PENDING"], "IDLE")
    with pytest.raises(ValueError, match="'done'"):
        diagram.render_path("dot", ["IDLE"], "done")


def test_render_path_rejects_a_pair_no_transition_joins():
    with pytest.raises(ValueError, match="'CONFIRMED' to 'CLOSE_EMITTED'"):
        diagram.render_path("dot", ["CONFIRMED", "CLOSE_EMITTED"], "CLOSE_EMITTED")


def test_write_regenerates_files_and_readme_block(tmp_path):
    (tmp_path / "README.md").write_text("# x\n\n```mermaid\nstale\n```\n\ntext\n")
    diagram.main(["--write", str(tmp_path)])
    for fmt in FORMATS:
        assert (tmp_path / diagram.FILE_NAMES[fmt]).read_text() == diagram.render(fmt)
    readme = (tmp_path / "README.md").read_text()
    assert _mermaid_blocks(readme) == [diagram.render("mermaid")]
    assert readme.endswith("```\n\ntext\n")


def _svg_states(svg: str) -> dict[str, str]:
    """data-state → the class list of its group."""
    return dict(
        (m.group(2), m.group(1))
        for m in re.finditer(r'<g class="([^"]*)" data-state="(\w+)">', svg)
    )


def test_the_svg_draws_every_state_and_edge_of_the_machine():
    import xml.etree.ElementTree as ET

    svg = diagram.render("svg")
    ET.fromstring(svg)  # well-formed
    assert set(_svg_states(svg)) == {s.value for s in State}
    finals = {s for s, css in _svg_states(svg).items() if "final" in css.split()}
    assert finals == {s.value for s in FINAL}
    assert svg.count('<path class="edge') == len(diagram.table_edges())
    assert "onpath" not in svg and "current" not in svg


def test_the_svg_highlights_a_rotations_path_and_state():
    svg = diagram.render_path("svg", ["IDLE", "CLOSE_EMITTED", "TIMED_OUT"], "TIMED_OUT")
    states = _svg_states(svg)
    assert states["TIMED_OUT"].split() == ["state", "final", "current"]
    assert {s for s, css in states.items() if "onpath" in css} == {
        "IDLE",
        "LOCKED",
        "CLOSE_EMITTED",
    }
    # lock, emit_close and timeout are drawn on the path, nothing else.
    assert svg.count('<path class="edge onpath"') == 3


def test_the_svg_needs_no_style_element_or_script():
    # The console's CSP (style-src 'self', script-src 'self') must not block it.
    svg = diagram.render("svg")
    assert "<style" not in svg and "<script" not in svg and "style=" not in svg
