"""Charts drawn on the server as inline SVG: no script, no library, and no ``style``.

The content security policy forbids inline styles, so every colour and size is an SVG
presentation attribute (``fill=``, ``stroke=``, ``font-size=``), which the policy does not
govern. Every bar or line is a link to what it stands for, with a ``<title>`` for the
tooltip and an ``aria-label`` for screen readers; each chart has a title and a one-line description.
The chart is a labelled group, not an image (an image's children are hidden from assistive
technology, and so would its links be), so each link is reached with the keyboard and read by
name; a table of the same figures, with the same links, follows it as its text alternative.
Texts and URLs are escaped; the functions return safe strings for templates.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache

from django.template.defaultfilters import filesizeformat
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import get_language

from compliance.health import HEALTHY_FROM, WARNING_FROM, format_age
from drpanel.templatetags.panel_time import format_at, formatter

PALETTE = ("#1f5fbf", "#8a3ffc", "#007d79", "#b28600", "#d12771", "#4e5b6b")
WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 14, 12, 26
INK, MUTED, GRID = "#1c2330", "#5d6778", "#d9dee6"
OK, BAD = "#1e7a46", "#b3261e"
BANDS = (("#e5f4ea", HEALTHY_FROM, 100), ("#fff3d6", WARNING_FROM, HEALTHY_FROM), ("#fde8e6", 0, WARNING_FROM))


def size_text(size: int) -> str:
    """``filesizeformat``, remembered per size and language: thousands of bars share a few sizes."""
    return _size_text(size, get_language())


@lru_cache(maxsize=4096)
def _size_text(size: int, language: str | None) -> str:  # ``language`` is part of the key only
    return filesizeformat(size)


def _svg(key: str, title: str, description: str, body: list[str], table: str) -> SafeString:
    head = (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="group" '
            f'aria-labelledby="{key}-title" aria-describedby="{key}-desc" preserveAspectRatio="xMidYMid meet" '
            f'font-family="system-ui, sans-serif" xmlns="http://www.w3.org/2000/svg">'
            f'<title id="{key}-title">{escape(title)}</title><desc id="{key}-desc">{escape(description)}</desc>')
    return mark_safe(head + "".join(body) + "</svg>" + table)  # noqa: S308 - every text and URL here is escaped


def _link(url: str, label: str, shape: str) -> str:
    """A keyboard-reachable link around a mark of the chart, named for screen readers."""
    return f'<a href="{escape(url)}" aria-label="{escape(label)}">{shape}</a>'


def _table(key: str, title: str, head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """The chart's figures as a table: its text alternative. Cells are HTML, escaped by the caller."""
    cells = "".join(f"<tr>{''.join(f'<td>{c}</td>' for c in row)}</tr>" for row in rows)
    return (f'<details class="chart-data" data-testid="{key}-data"><summary>{escape(title)}: the figures as a table'
            f'</summary><div class="table-wrap"><table class="table"><thead><tr>'
            f'{"".join(f"<th scope=col>{escape(h)}</th>" for h in head)}</tr></thead>'
            f'<tbody>{cells}</tbody></table></div></details>')


def _cell_link(url: str, text: str) -> str:
    return f'<a href="{escape(url)}">{escape(text)}</a>'


def _plot_x(at: datetime, start: datetime, end: datetime) -> float:
    span = (end - start).total_seconds() or 1
    fraction = min(1.0, max(0.0, (at - start).total_seconds() / span))
    return round(LEFT + fraction * (WIDTH - LEFT - RIGHT), 1)


def _x_scale(start: datetime, end: datetime):
    """``_plot_x`` for many times between the same ``start`` and ``end``."""
    span, width = (end - start).total_seconds() or 1, WIDTH - LEFT - RIGHT

    def x_of(at: datetime) -> float:
        return round(LEFT + min(1.0, max(0.0, (at - start).total_seconds() / span)) * width, 1)
    return x_of


def _plot_y(value: float, top: float) -> float:
    fraction = value / top if top else 0
    return round(HEIGHT - BOTTOM - fraction * (HEIGHT - TOP - BOTTOM), 1)


def _text(x, y, text, *, anchor="start", size=11, fill=MUTED) -> str:
    return f'<text x="{x}" y="{y}" font-size="{size}" fill="{fill}" text-anchor="{anchor}">{escape(text)}</text>'


def _time_axis(start: datetime, end: datetime) -> list[str]:
    """A baseline and a date under it every seven days, the last one at ``end``."""
    parts = [f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" '
             f'stroke="{GRID}" stroke-width="1"/>']
    tick = end
    while tick >= start:
        x = _plot_x(tick, start, end)
        parts.append(f'<line x1="{x}" y1="{HEIGHT - BOTTOM}" x2="{x}" y2="{HEIGHT - BOTTOM + 4}" stroke="{MUTED}"/>')
        parts.append(_text(x, HEIGHT - 8, f"{tick:%d %b}", anchor="end" if tick == end else "middle"))
        tick -= timedelta(days=7)
    return parts


def health_chart(series: list[dict], start: datetime, end: datetime) -> SafeString:
    """Health score over time, one step line per system, on the three bands.

    ``series``: ``{"name", "color", "url", "points": [(at, score), ...], "first_recorded"}``;
    a score holds until the next point and the last one runs to ``end``. Before a system's
    first recorded score there is no line: nothing was measured then.
    """
    body = []
    for fill, low, high in BANDS:
        y_top, y_bottom = _plot_y(high, 100), _plot_y(low, 100)
        body.append(f'<rect x="{LEFT}" y="{y_top}" width="{WIDTH - LEFT - RIGHT}" '
                    f'height="{round(y_bottom - y_top, 1)}" fill="{fill}"/>')
    for value in (0, WARNING_FROM, HEALTHY_FROM, 100):
        body.append(_text(LEFT - 6, _plot_y(value, 100) + 4, str(value), anchor="end"))
    body += _time_axis(start, end)
    firsts = [s["first_recorded"] for s in series if s["first_recorded"] is not None]
    if not firsts:
        body.append(_text((LEFT + WIDTH) / 2, HEIGHT / 2, "No score recorded yet", anchor="middle", size=13))
    elif min(firsts) > start:
        x = _plot_x(min(firsts), start, end)
        body.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{HEIGHT - BOTTOM}" stroke="{MUTED}" '
                    f'stroke-dasharray="4 3"/>')
        if x - LEFT > 150:
            body.append(_text(x - 6, TOP + 14, f"no history before {format_at(min(firsts), 'd M H:i')}", anchor="end"))
    rows = []
    x_of, y_of = _x_scale(start, end), {}
    for s in series:
        points = s["points"]
        if not points:
            rows.append((escape(s["name"]), "not recorded yet", "", "0"))
            continue
        coords = []
        previous = None
        for at, score in points:  # a hundred systems draw thousands of points: each y is computed once per score
            x = x_of(at)
            if score not in y_of:
                y_of[score] = _plot_y(score, 100)
            if previous is not None:
                coords.append(f"{x},{previous}")
            previous = y_of[score]
            coords.append(f"{x},{previous}")
        coords.append(f"{_plot_x(end, start, end)},{_plot_y(points[-1][1], 100)}")
        last_at, last_score = points[-1]
        body.append(_link(s["url"], f'{s["name"]}: health score {last_score} since {format_at(last_at)}',
                          f'<polyline points="{" ".join(coords)}" fill="none" '
                          f'stroke="{s["color"]}" stroke-width="2.5" stroke-linejoin="round">'
                          f'<title>{escape(s["name"])}: {last_score} since {format_at(last_at)}</title></polyline>'
                          f'<circle cx="{_plot_x(end, start, end)}" cy="{_plot_y(last_score, 100)}" r="4" '
                          f'fill="{s["color"]}"><title>{escape(s["name"])}: {last_score} now</title></circle>'))
        lowest = min(score for _, score in points)
        rows.append((_cell_link(s["url"], s["name"]), f"{last_score} since {escape(format_at(last_at))}",
                     str(lowest), str(len(points))))
    title = "Health score over 30 days"
    return _svg("health-chart", title,
                "Recorded health score per system; healthy from 90, warning 67 to 89, critical up to 66.", body,
                _table("health-chart", title, ("System", "Score now", "Lowest in the window", "Scores recorded"),
                       rows))


def sizes_chart(bars: list[dict], start: datetime, end: datetime, *, title: str) -> SafeString:
    """One bar per artifact at its creation time, its height the stored size; each bar links to it.

    ``bars``: ``{"at", "value" (bytes), "color", "url", "label"}``.
    """
    top = max(b["value"] for b in bars) or 1
    body = [_text(LEFT - 6, _plot_y(top, top) + 4, filesizeformat(top), anchor="end"),
            _text(LEFT - 6, _plot_y(0, top) + 4, "0", anchor="end"),
            f'<line x1="{LEFT}" y1="{_plot_y(top, top)}" x2="{WIDTH - RIGHT}" y2="{_plot_y(top, top)}" '
            f'stroke="{GRID}" stroke-dasharray="2 3"/>']
    body += _time_axis(start, end)
    xs = [_plot_x(bar["at"], start, end) for bar in bars]
    # As wide as the closest two bars allow (so dense days stay distinct), between 1.5 and 5 units.
    closest = min((b - a for a, b in zip(xs, xs[1:], strict=False) if b > a), default=5.0)
    width = round(max(1.5, min(5.0, closest * 0.7)), 1)
    rows = []
    at_text = formatter()
    # Thousands of bars with a hundred systems: each text is escaped once, for the mark and the table alike.
    for bar, at_x in zip(bars, xs, strict=True):
        x = at_x - width / 2
        y = _plot_y(bar["value"], top)
        height = max(1.0, round(HEIGHT - BOTTOM - y, 1))
        url, label = escape(bar["url"]), escape(bar["label"])
        body.append(f'<a href="{url}" aria-label="{label}"><rect x="{round(x, 1)}" '
                    f'y="{round(HEIGHT - BOTTOM - height, 1)}" width="{width}" height="{height}" '
                    f'fill="{bar["color"]}"><title>{label}</title></rect></a>')
        rows.append((f'<a href="{url}">{label}</a>', escape(at_text(bar["at"])), escape(size_text(bar["value"]))))
    key = "sizes-" + "".join(c for c in title.lower() if c.isalnum())
    return _svg(key, title, f"{len(bars)} artifact(s); the tallest is {filesizeformat(top)}.", body,
                _table(key, title, ("Artifact", "Created", "Stored size"), rows))


def rto_chart(drills: list, target_seconds: int) -> SafeString:
    """Measured RTO per drill, in order, against the target line; each bar links to its drill.

    ``drills``: objects with ``at``, ``seconds``, ``label``, ``url``. Bars over the target are red.
    """
    top = max([d.seconds for d in drills] + [target_seconds]) * 1.1
    slot = (WIDTH - LEFT - RIGHT) / len(drills)
    width = max(4.0, min(40.0, slot * 0.6))
    target_y = _plot_y(target_seconds, top)
    body = [f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="{GRID}"/>',
            _text(LEFT - 6, HEIGHT - BOTTOM + 4, "0", anchor="end")]
    rows = []
    for n, drill in enumerate(drills):
        x = LEFT + slot * n + (slot - width) / 2
        y = _plot_y(drill.seconds, top)
        met = drill.seconds <= target_seconds
        rto = format_age(timedelta(seconds=drill.seconds))
        said = f'{drill.label}: RTO {rto} ({"within" if met else "over"} the target)'
        body.append(_link(drill.url, said, f'<rect x="{round(x, 1)}" y="{y}" width="{round(width, 1)}" '
                                            f'height="{round(HEIGHT - BOTTOM - y, 1)}" fill="{OK if met else BAD}">'
                                            f'<title>{escape(said)}</title></rect>'))
        rows.append((_cell_link(drill.url, drill.label), escape(format_at(drill.at)),
                     escape(rto), "within" if met else "over"))
        body.append(_text(round(x + width / 2, 1), HEIGHT - 8, f"{drill.at:%d %b}", anchor="middle"))
    body.append(f'<line x1="{LEFT}" y1="{target_y}" x2="{WIDTH - RIGHT}" y2="{target_y}" stroke="{INK}" '
                f'stroke-dasharray="6 4"/>')
    body.append(_text(WIDTH - RIGHT, target_y - 4, f"target {format_age(timedelta(seconds=target_seconds))}",
                      anchor="end", fill=INK))
    target = format_age(timedelta(seconds=target_seconds))
    return _svg("rto-chart", "RTO per drill", f"{len(drills)} drill(s) against the {target} target.", body,
                _table("rto-chart", "RTO per drill", ("Drill", "At", "RTO", f"Against the {target} target"), rows))
