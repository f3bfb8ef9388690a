"""Draw a ``paxos.trace.Trace`` as a sequence diagram: one self-contained HTML page with an inline SVG.

Theory of operation
-------------------
Time runs down the page, one lifeline per node. Only steps where something visible happens get a row
(a message sent or arriving, a mark); a gap of idle steps shows as a dotted ``…`` with the number of
steps skipped. A message is an arrow from its sender's lifeline at the step it was sent to its
receiver's at the step it arrived, coloured by type (the legend says which); a lost message stops
half-way with a red ✕; a message still on the wire when the run ended is faint. Marks sit on the right
of a lifeline: a crash (and the lifeline dashed until the restart), an election (candidate, leader,
stepping down), a client command, and each slot as it is applied. A partition shades the rows it lasts.
Every arrow and mark has a tooltip (an SVG ``<title>``) with the full message.

Heartbeats and their acks are left out unless asked for (``heartbeats=True``): a leader sends them
every other tick, and they would bury the protocol's other messages.

The page needs nothing else: no script, no font, no network. The same trace gives the same bytes.
Each arrow is an SVG ``line`` of class ``msg msg-<Type>`` (and ``lost`` or ``in-flight``), each mark a
``g`` of class ``mark mark-<kind>``: tests and the browser test count them.
"""
from __future__ import annotations

from html import escape

from .trace import Flight, Mark, Trace, describe, show_value

__all__ = ["render", "COLORS", "HIDDEN_BY_DEFAULT"]

COLORS = {
    "Prepare": "#1f6fb4", "Promise": "#10a3b5", "Accept": "#2b9a2b", "Accepted": "#1d6b1d",
    "Decide": "#8a4fbf", "Nack": "#d62728", "CatchupRequest": "#8c564b", "CatchupReply": "#b07a5a",
    "Heartbeat": "#b8b8b8", "HeartbeatAck": "#b8b8b8",
}
OTHER_COLOR = "#7f7f7f"
HIDDEN_BY_DEFAULT = ("Heartbeat", "HeartbeatAck")

COLUMN_PX = 250
LEFT_PX = 90
TOP_PX = 64
ROW_PX = 28
LABEL_AT = 0.6  # a message's label sits this far along its arrow (marks sit near the sender's end)
GAP_SHOWN_STEPS = 3  # idle stretches at least this long get a "… N idle steps" line
MARK_COLORS = {"crash": "#d62728", "restart": "#2b9a2b", "candidate": "#e08a00", "leader": "#b8860b",
               "follower": "#777777", "command": "#7b3fb0", "applied": "#1d6b1d", "replayed": "#7aa37a"}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin-bottom: .2em; } .sub { color: #555; margin-top: 0; }
svg text { font-size: 11px; font-family: ui-monospace, Menlo, Consolas, monospace; }
svg .label { paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
svg .node-head text { font-size: 13px; font-weight: bold; }
svg .in-flight { opacity: .35; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #f3f3f3; text-align: left; } .legend span { display: inline-block; margin-right: 1em; }
.legend i { display: inline-block; width: 1.6em; height: 3px; vertical-align: middle; margin-right: .3em; }
"""


def _color(kind: str) -> str:
    return COLORS.get(kind, OTHER_COLOR)


def render(trace: Trace, *, heartbeats: bool = False) -> str:
    """The page for ``trace`` (a complete HTML document, as text)."""
    hidden = () if heartbeats else HIDDEN_BY_DEFAULT
    flights = [f for f in trace.flights if f.kind not in hidden]
    marks = trace.marks

    # Rows: each step with something visible gets as many rows as its busiest lifeline has marks.
    per_step: dict[int, int] = {}
    stacked: dict[tuple[int, int | None], int] = {}
    for f in flights:
        per_step.setdefault(f.sent_at, 1)
        per_step.setdefault(f.arrived_at, 1)
    for m in marks:
        key = (m.time, m.node)
        stacked[key] = stacked.get(key, 0) + 1
        per_step[m.time] = max(per_step.get(m.time, 1), stacked[key])
    steps = sorted(per_step)
    y_of: dict[int, int] = {}
    gaps: list[tuple[int, int]] = []  # (y, idle steps skipped before this row)
    y = TOP_PX + ROW_PX
    previous = None
    for step in steps:
        if previous is not None and step - previous > GAP_SHOWN_STEPS:
            gaps.append((y, step - previous - 1))
            y += ROW_PX // 2
        y_of[step] = y
        y += ROW_PX * per_step[step]
        previous = step
    bottom = y + ROW_PX
    x_of = {node: LEFT_PX + COLUMN_PX // 2 + i * COLUMN_PX for i, node in enumerate(trace.nodes)}
    width = LEFT_PX + COLUMN_PX * len(trace.nodes) + 40

    out: list[str] = []
    out.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{bottom}" '
               f'viewBox="0 0 {width} {bottom}" role="img" aria-label="sequence diagram">')
    out.append("<defs>")
    for kind in sorted({f.kind for f in flights}):
        out.append(f'<marker id="arrow-{kind}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
                   f'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
                   f'fill="{_color(kind)}"/></marker>')
    out.append("</defs>")

    # Partitions: shade the rows between a partition and the next heal (or the end).
    start: Mark | None = None
    edges: list[Mark | None] = [*(m for m in marks if m.kind in ("partition", "heal")), None]  # None: the end
    for edge in edges:
        if edge is not None and edge.kind == "partition" and start is None:
            start = edge
        elif start is not None and (edge is None or edge.kind == "heal"):
            y0 = y_of[start.time] - ROW_PX // 2
            y1 = (y_of[edge.time] if edge is not None else bottom) - ROW_PX // 2
            out.append(f'<g class="mark mark-partition"><title>{escape(start.text)}</title>'
                       f'<rect x="{LEFT_PX - 10}" y="{y0}" width="{width - LEFT_PX}" height="{y1 - y0}" '
                       f'fill="#ffb347" fill-opacity=".13"/>'
                       f'<text x="{LEFT_PX - 6}" y="{y0 + 12}" fill="#b36200" class="label">'
                       f'{escape(start.text)}</text></g>')
            if edge is not None:
                out.append(f'<g class="mark mark-heal"><text x="{LEFT_PX - 6}" y="{y1 + 4}" fill="#b36200" '
                           f'class="label">{escape(edge.text)}</text></g>')
            start = None

    # Lifelines, dashed while the node is down.
    for node, x in x_of.items():
        out.append(f'<g class="node-head"><rect x="{x - 45}" y="12" width="90" height="28" rx="6" '
                   f'fill="#eef3fb" stroke="#4a6fa5"/>'
                   f'<text x="{x}" y="31" text-anchor="middle">node {node}</text></g>')
        out.append(f'<line class="lifeline" x1="{x}" y1="40" x2="{x}" y2="{bottom}" stroke="#4a6fa5" '
                   f'stroke-width="1.5"/>')
        down_at = None
        for m in marks:
            if m.node != node:
                continue
            if m.kind == "crash":
                down_at = m.time
            elif m.kind == "restart" and down_at is not None:
                out.append(_down_segment(x, y_of[down_at], y_of[m.time]))
                down_at = None
        if down_at is not None:
            out.append(_down_segment(x, y_of[down_at], bottom))

    # Time labels and idle gaps.
    for step in steps:
        out.append(f'<text x="8" y="{y_of[step] + 4}" fill="#999">t={step}</text>')
    for gy, skipped in gaps:
        plural = "s" if skipped > 1 else ""
        out.append(f'<text class="gap" x="8" y="{gy + 2}" fill="#bbb">… {skipped} idle step{plural}</text>')

    # Messages.
    for f in flights:
        out.append(_arrow(f, x_of, y_of))

    # Marks, stacked per lifeline and step.
    used: dict[tuple[int, int], int] = {}
    for m in marks:
        if m.node is None:
            continue
        key = (m.time, m.node)
        row = used.get(key, 0)
        used[key] = row + 1
        out.append(_mark(m, x_of[m.node], y_of[m.time] + row * ROW_PX))
    out.append("</svg>")

    return _page(trace, "\n".join(out), flights, heartbeats)


def _down_segment(x: int, y0: int, y1: int) -> str:
    return (f'<line class="down" x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#fff" stroke-width="3"/>'
            f'<line class="down" x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#bbb" stroke-width="1.5" '
            f'stroke-dasharray="4 4"/>')


def _arrow(f: Flight, x_of: dict[int, int], y_of: dict[int, int]) -> str:
    x1, y1 = x_of[f.src], y_of[f.sent_at]
    x2: float = x_of[f.dst]  # a lost message's arrow stops part of the way
    y2: float = y_of[f.arrived_at]
    color = _color(f.kind)
    classes = f"msg msg-{f.kind}"
    label = describe(f.message)
    tip = f"t={f.sent_at}→{f.arrived_at} node {f.src} → node {f.dst}: {f.message!r}"
    extra = ""
    if f.fate == "lost":
        classes += " lost"
        x2, y2 = x1 + (x2 - x1) * 0.45, y1 + (y2 - y1) * 0.45
        tip += " (lost: the receiver was down or cut off)"
        extra = (f'<text x="{x2:.0f}" y="{y2 + 4:.0f}" text-anchor="middle" fill="#d62728" '
                 f'font-size="14">✕</text>')
        marker = ""
    else:
        marker = f' marker-end="url(#arrow-{f.kind})"'
        if f.fate == "in flight":
            classes += " in-flight"
            tip += " (still on the wire when the run ended)"
    dash = ' stroke-dasharray="5 3"' if f.fate != "delivered" else ""
    mx, my = x1 + (x2 - x1) * LABEL_AT, y1 + (y2 - y1) * LABEL_AT - 4
    return (f'<g class="{classes}" data-type="{f.kind}"><title>{escape(tip)}</title>'
            f'<line class="{classes}" x1="{x1}" y1="{y1}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{color}" '
            f'stroke-width="1.6"{dash}{marker}/>{extra}'
            f'<text class="label" x="{mx:.0f}" y="{my:.0f}" text-anchor="middle" fill="{color}">'
            f'{escape(label)}</text></g>')


def _mark(m: Mark, x: int, y: int) -> str:
    color = MARK_COLORS.get(m.kind, "#555")
    text = {"crash": "✕ crash", "restart": "↻ restart from disk", "leader": f"★ {m.text}",
            "follower": "steps down", "replayed": f"{m.text} (replayed)"}.get(m.kind, m.text)
    tip = f"t={m.time} node {m.node}: {m.text}"
    box = ""
    if m.kind in ("leader", "applied", "command"):
        w = 7 * len(text) + 10
        box = (f'<rect x="{x + 6}" y="{y - 9}" width="{w}" height="16" rx="4" fill="#fff" '
               f'stroke="{color}" stroke-width="1.2"/>')
    dot = f'<circle cx="{x}" cy="{y}" r="3.5" fill="{color}"/>'
    return (f'<g class="mark mark-{m.kind}"><title>{escape(tip)}</title>{dot}{box}'
            f'<text class="label" x="{x + 11}" y="{y + 4}" fill="{color}">{escape(text)}</text></g>')


def _page(trace: Trace, svg: str, flights: list[Flight], heartbeats: bool) -> str:
    kinds = sorted({f.kind for f in flights})
    legend = "".join(f'<span><i style="background:{_color(k)}"></i>{k}</span>' for k in kinds)
    counts: dict[str, int] = {}
    for f in trace.flights:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    applied: dict[int, list[str]] = {}
    for m in trace.marks:
        if m.kind == "applied":
            applied.setdefault(m.slot, []).append(f"node {m.node} at t={m.time}")
    rows = "".join(f"<tr><td>{slot}</td><td>{escape(show_value(value))}</td>"
                   f"<td>{escape(', '.join(applied.get(slot, [])))}</td></tr>"
                   for slot, value in trace.decided.items())
    sent = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    hidden = "" if heartbeats else (" Heartbeats and their acks are not drawn (<code>kv trace --heartbeats</code> "
                                    "draws them).")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Paxos trace: {escape(trace.title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>Paxos trace: {escape(trace.title)}</h1>
<p class="sub">Seed {trace.seed}, {len(trace.nodes)} nodes, {trace.end} steps (a node ticks every 4 steps; a
message takes 1 to 3). Time runs down; each row is a step where something happened. Hover over an arrow
or a mark for the whole message.{hidden} Made by <code>kv trace</code> (<code>paxos/trace.py</code>).</p>
<p class="legend">{legend}</p>
{svg}
<h2>Decided values</h2>
<table class="decided"><tr><th>slot</th><th>value</th><th>applied</th></tr>{rows}</table>
<p class="sub">Messages sent, by type (all of them, drawn or not): {escape(sent)}.</p>
</body></html>
"""
