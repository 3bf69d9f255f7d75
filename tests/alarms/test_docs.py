"""docs/alarms.md must show the alarm table and the session table exactly as the code has
them. On failure, the assertion message shows the text to paste between the markers."""

from __future__ import annotations

from pathlib import Path

from controller.alarms import ALARM_RULES
from controller.session import TRANSITIONS, SessionEvent, SessionState

DOC = Path(__file__).resolve().parents[2] / "docs" / "alarms.md"


def alarm_table() -> str:
    lines = [
        "| code | priority | category | latching | cause | what the nurse does "
        "| why this priority |",
        "|---|---|---|---|---|---|---|",
    ]
    lines.extend(
        f"| `{r.code.value}` | {r.priority.value.upper()} | {r.category.value} "
        f"| {'yes' if r.latching else 'no'} | {r.cause} | {r.action} | {r.why} |"
        for r in ALARM_RULES.values()
    )
    return "\n".join(lines)


def transition_grid() -> str:
    states = list(SessionState)
    lines = [
        "| event \\ state | " + " | ".join(s.value for s in states) + " |",
        "|---|" + "---|" * len(states),
    ]
    for event in SessionEvent:
        cells = []
        for state in states:
            target = TRANSITIONS.get((state, event))
            if target is None:
                cells.append("✗")
            elif target is state:
                cells.append("·")
            else:
                cells.append(f"**{target.value}**")
        lines.append(f"| `{event.value}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _between(text: str, name: str) -> str:
    start = f"<!-- {name}:start -->\n"
    end = f"\n<!-- {name}:end -->"
    assert start in text, f"docs/alarms.md lacks the marker {start!r}"
    return text.split(start, 1)[1].split(end, 1)[0]


def test_doc_alarm_table_matches_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    expected = alarm_table()
    assert _between(text, "alarm-table") == expected, expected


def test_doc_transition_grid_matches_the_code() -> None:
    text = DOC.read_text(encoding="utf-8")
    expected = transition_grid()
    assert _between(text, "transition-grid") == expected, expected
