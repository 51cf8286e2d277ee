"""The student's whole history as one accessible inline SVG (issue 10, the student page).

`render_timeline(history, facts, as_of, lang)` draws, on one time axis:
- the time in and out of Taiwan (from the `entered` / `departed` facts; the departure day
  counts as a day in Taiwan, as R-OVERSTAY counts it);
- each ARC's validity (from the `arc_issued` facts: a bar from the issue day to its
  `valid_until`, cut at the day before the next card's issue or the day before a
  revocation);
- one lane per task of the view, from its opening to its due day, coloured by status, with
  its late part (overdue until the as-of day, or done late until its done day) and a mark
  on the day it was done;
- the fines as markers on their accrual day; the overstays shaded across every lane;
- a vertical line on the as-of day.

`history` is the view **as of `as_of`** (the same view the page's tables show), so every
task and fine is drawn with the status it has on that day; the axis spans the student's
whole known history (every counted fact, every task and ARC day), so it stays put while the
as-of line moves. The facts drawn are those the view counted (`known_facts` at the view's
`known_at`: retracted events leave nothing behind); a fact after the as-of day is drawn
dimmed (class `after`), as is anything that starts after it.

Each item is a `<g class="item …" tabindex="0" role="img" aria-label="…">` with a `<title>`
(the browser's tooltip) carrying its name, dates, rule id and causing events, and a hidden
`tip` that the stylesheet (`TIMELINE_CSS`) shows under the lanes while the item is hovered
or focused — no script. Colours are CSS classes only (the page's Content-Security-Policy
forbids inline style). The width is a `viewBox`, never pixels: the SVG scales to its box;
below 760 px the CSS keeps it legible and its wrapper (`.timeline-scroll`) scrolls sideways.

Free text (notes, addresses, reasons) is never drawn: only codes, dates, amounts and event
ids. Every text is escaped, and control, format and bidi characters in ids are shown as
`\\uXXXX`, so no stored value can change the markup or the reading order.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

from markupsafe import Markup, escape

from projections import dates
from projections.models import Fine, StudentView, Task
from timeline.facts import Fact, known_facts
from web.labels import (
    EVENT_NAMES,
    FINE_NAMES,
    FINE_STATUS_NAMES,
    HTML_LANG,
    TASK_NAMES,
    TASK_STATUS_NAMES,
    WHERE_NAMES,
    Lang,
    lang_of,
    name,
    ntd,
    ntd_range,
    timeline_text,
)

WIDTH = 960  # viewBox units; the rendered width follows the page
PLOT_LEFT = 210.0  # lane labels sit left of this
PLOT_RIGHT = 944.0
AXIS_HEIGHT = 44
LANE_HEIGHT = 26
BAR_HEIGHT = 12
TIP_HEIGHT = 46
MIN_BAR = 3.0  # a one-day bar on a long axis is still visible and hoverable
LABEL_COLUMNS = 30  # lane label width, in half-width characters (a CJK character is two)
PRESENCE_TYPES = ("entered", "departed")
# Facts from which A-PRESENCE takes a student without entries on file to be in Taiwan.
PRESENCE_IMPLIED = ("arc_applied", "arc_issued", "address_changed", "workplace_changed")
REVOKING_TYPES = ("studies_ceased", "arc_revoked")
DONE = ("done", "done_late")

TIMELINE_CSS = """\
.timeline-scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
svg.timeline{display:block;width:100%;min-width:760px;height:auto;\
font-family:system-ui,"Noto Sans CJK TC","WenQuanYi Micro Hei",sans-serif;font-size:13px}
svg.timeline text{fill:#1f1f1f}
svg.timeline .grid{stroke:#d9d9d9;stroke-width:1}
svg.timeline .grid.year{stroke:#9e9e9e}
svg.timeline .tick{fill:#4a4a4a;font-size:11px}
svg.timeline .lane-bg{fill:#f6f7f9}
svg.timeline .item{cursor:default;outline:none}
svg.timeline .item:focus>rect,svg.timeline .item:focus>path,\
svg.timeline .item:hover>rect,svg.timeline .item:hover>path{stroke:#000;stroke-width:2}
svg.timeline .presence.in>rect{fill:#1f6fa8}
svg.timeline .presence.out>rect{fill:#c9d3dd}
svg.timeline .presence.assumed>rect{fill:#7fa8c8}
svg.timeline .arc>rect{fill:#2e7d4f}
svg.timeline .arc.revoked>rect{fill:#7b3030}
svg.timeline .task.upcoming>rect{fill:#aab7c4}
svg.timeline .task.open>rect{fill:#d98e04}
svg.timeline .task.overdue>rect{fill:#c62828}
svg.timeline .task.done>rect{fill:#2e7d32}
svg.timeline .task.done_late>rect{fill:#7b3fa0}
svg.timeline .task.cancelled>rect{fill:#e0e0e0;stroke:#757575;stroke-dasharray:4 2}
svg.timeline .task>rect.late{fill:#c62828;fill-opacity:.45}
svg.timeline .task>.done-mark{fill:#fff;stroke:#1f1f1f;stroke-width:1.5}
svg.timeline .fine.accrued>path{fill:#c62828}
svg.timeline .fine.imposed>path{fill:#e65100}
svg.timeline .fine.paid>path{fill:#2e7d32}
svg.timeline .overstay>rect{fill:#c62828;fill-opacity:.13;stroke:#c62828;stroke-opacity:.5}
svg.timeline .as-of line{stroke:#000;stroke-width:2;stroke-dasharray:5 3}
svg.timeline .as-of text{font-weight:600}
svg.timeline .after>rect,svg.timeline .after>path,svg.timeline .after>circle{opacity:.45}
svg.timeline .tip{visibility:hidden;pointer-events:none}
svg.timeline .item:hover>.tip,svg.timeline .item:focus>.tip{visibility:visible}
svg.timeline .tip>rect{fill:#fff;stroke:#9e9e9e;stroke-width:1}
svg.timeline .tip>text{fill:#000}
/* on paper the drawing scales to the page (it is a viewBox) */
@media print{.timeline-scroll{overflow:visible}svg.timeline{min-width:0}}
"""


# -- text ------------------------------------------------------------------------------------
def _visible(text: str) -> str:
    """`text` with control, format, bidi and separator characters written as `\\uXXXX`."""
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Cn", "Co", "Zl", "Zp"):
            code = ord(char)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def _sep(lang: Lang) -> str:
    return timeline_text("list_sep", lang)


def _aside(text: str, lang: Lang) -> str:
    """`text` in brackets after what precedes it (full-width in Chinese)."""
    return timeline_text("aside", lang, text=text)


def _text(value: object) -> str:
    """A value as escaped text content (or attribute value)."""
    return str(escape(_visible(str(value))))


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _tag(tag: str, attrs: dict[str, object], inner: str = "") -> str:
    """One element; attribute values are escaped, `inner` is markup built by this module."""
    rendered = "".join(
        f' {key}="{_num(value) if isinstance(value, float) else _text(value)}"'
        for key, value in attrs.items()
        if value is not None
    )
    if inner or tag in ("g", "text"):
        return f"<{tag}{rendered}>{inner}</{tag}>"
    return f"<{tag}{rendered}/>"


def _clip(text: str, columns: int = LABEL_COLUMNS) -> str:
    """`text` cut to `columns` half-width columns (a CJK character takes two), with `…`."""
    used, fits = 0, 0  # columns so far; characters that fit with room left for the `…`
    for i, char in enumerate(text):
        used += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
        if used <= columns - 1:
            fits = i + 1
        if used > columns:
            return text[:fits] + "…"
    return text


# -- the axis --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """Days → x. The axis runs from the first of a month to the first of a later month.

    Day `d` covers [x(d), x(d + 1)): a bar over days a…b spans x(a) to x(b + 1), a marker of
    day d sits in the middle of its day.
    """

    start: date  # first day drawn
    end: date  # the first day after the axis

    @classmethod
    def spanning(cls, days: Iterable[date]) -> Axis:
        """The smallest whole-month axis holding every day of `days`."""
        found = list(days)
        first, last = min(found), max(found)
        start = date(first.year, first.month, 1)
        return cls(start, dates.add_months(date(last.year, last.month, 1), 1))

    @property
    def span(self) -> int:
        """Days on the axis."""
        return dates.days_between(self.start, self.end)

    def x(self, day: date) -> float:
        """Where `day` begins."""
        offset = min(max(dates.days_between(self.start, day), 0), self.span)
        return PLOT_LEFT + offset * (PLOT_RIGHT - PLOT_LEFT) / self.span

    def day_width(self) -> float:
        """The width of one day."""
        return (PLOT_RIGHT - PLOT_LEFT) / self.span

    def middle(self, day: date) -> float:
        """The middle of `day` (markers, the as-of line)."""
        return self.x(day) + self.day_width() / 2

    def bar(self, first: date, last: date) -> tuple[float, float]:
        """x and width of a bar over the days `first`…`last` (at least MIN_BAR wide)."""
        left, right = self.x(first), self.x(dates.next_day(last))
        if right - left >= MIN_BAR:
            return left, right - left
        centre = (left + right) / 2
        left = min(max(centre - MIN_BAR / 2, PLOT_LEFT), PLOT_RIGHT - MIN_BAR)
        return left, MIN_BAR

    def ticks(self) -> list[tuple[date, str, bool]]:
        """(day, label or "", is a year boundary) for the gridlines."""
        months = self.span // 28
        if months <= 36:
            step = 1 if months <= 12 else 3
            out = []
            day = self.start
            index = 0
            while day < self.end:
                label = day.strftime("%Y-%m") if index % step == 0 else ""
                out.append((day, label, day.month == 1))
                day = dates.add_months(day, 1)
                index += 1
            return out
        years = self.end.year - self.start.year + 1
        step = max(1, -(-years // 16))  # at most 16 year labels
        return [
            (date(year, 1, 1), str(year), True)
            for year in range(self.start.year + (self.start.month != 1), self.end.year + 1, step)
            if self.start <= date(year, 1, 1) < self.end
        ]


# -- what is drawn ---------------------------------------------------------------------------
@dataclass
class _Item:
    """One focusable thing: its shapes, its words, its place in time."""

    kind: str  # presence | arc | overstay | task | fine
    classes: list[str]
    first: date
    last: date
    head: str
    detail: str
    shapes: list[str] = field(default_factory=list)

    def label(self, lang: Lang) -> str:
        """The accessible name and tooltip: the head, then the rule and the events."""
        if not self.detail:
            return self.head
        return self.head + timeline_text("clause_sep", lang) + self.detail


class _Citations:
    """Event ids → "id (type, day)" in the page's language, from the student's stream."""

    def __init__(self, facts: list[Fact], lang: Lang) -> None:
        self.lang = lang
        self.facts: dict[str, list[Fact]] = {}
        for fact in facts:
            self.facts.setdefault(fact.event_id, []).append(fact)

    def one(self, event_id: str) -> str:
        found = self.facts.get(event_id)
        if not found:
            return event_id
        fact = found[0]
        what = name(EVENT_NAMES, fact.type, self.lang) + _sep(self.lang) + str(fact.occurred_on)
        return event_id + _aside(what, self.lang)

    def cite(self, rule: str | None, event_ids: Iterable[str]) -> str:
        """ "rule R-…; events: id (type, day), …" in the page's language."""
        ids = list(dict.fromkeys(event_ids))  # in order, once each
        parts = [timeline_text("rule", self.lang, rule=rule)] if rule else []
        if ids:
            events = _sep(self.lang).join(self.one(e) for e in ids)
            parts.append(timeline_text("events", self.lang, events=events))
        else:
            parts.append(timeline_text("no_events", self.lang))
        return timeline_text("cite_sep", self.lang).join(parts)


def _presence(counted: list[Fact], until: date, lang: Lang, cite: _Citations) -> list[_Item]:
    """Segments in and out of Taiwan, from the entries and departures counted."""
    moves = [f for f in counted if f.type in PRESENCE_TYPES]
    # (first day of the state, in Taiwan?, events, assumed)
    starts: list[tuple[date, bool, list[str], bool]] = []
    if not moves:
        implied = [f for f in counted if f.type in PRESENCE_IMPLIED]
        if not implied:
            return []
        starts.append((implied[0].occurred_on, True, [implied[0].event_id], True))
    else:
        if moves[0].type == "departed":
            # In Taiwan before a first departure; when it began is not on file (A-PRESENCE).
            first_day = counted[0].occurred_on
            starts.append((first_day, True, [], True))
        for move in moves:
            inside = move.type == "entered"
            # The departure day is still a day in Taiwan (A-OVERSTAY-END counts it).
            begins = move.occurred_on if inside else dates.next_day(move.occurred_on)
            if starts and starts[-1][1] == inside:
                starts[-1][2].append(move.event_id)  # entered twice: one stay, both cited
                continue
            starts.append((begins, inside, [move.event_id], False))
    items = []
    for i, (begins, inside, events, assumed) in enumerate(starts):
        ends = dates.previous_day(starts[i + 1][0]) if i + 1 < len(starts) else until
        if ends < begins:
            continue  # left and came back the next day: no whole day abroad
        state = "in_taiwan" if inside else "abroad"
        head = f"{timeline_text(state, lang)} {begins} – {ends}"
        rule = "A-PRESENCE" if assumed else None
        if assumed:
            head += _aside(timeline_text("presence_assumed", lang), lang)
        items.append(
            _Item(
                "presence",
                ["presence", "in" if inside else "out", *(["assumed"] if assumed else [])],
                begins,
                ends,
                head,
                cite.cite(rule, events),
            )
        )
    return items


def _arcs(counted: list[Fact], lang: Lang, cite: _Citations) -> list[_Item]:
    """One bar per ARC card issued, cut where the next card or a revocation ends it."""
    issued = [f for f in counted if f.type == "arc_issued"]
    revocations = [f for f in counted if f.type in REVOKING_TYPES]
    items = []
    for i, fact in enumerate(issued):
        begins: date = fact.occurred_on
        valid_until: date = fact.get("valid_until")
        ends, events, note = valid_until, [fact.event_id], ""
        classes = ["arc"]
        following = issued[i + 1] if i + 1 < len(issued) else None
        if following is not None and following.occurred_on <= valid_until:
            ends = max(begins, dates.previous_day(following.occurred_on))
            note = timeline_text("arc_superseded_on", lang, day=following.occurred_on)
            events.append(following.event_id)
        for revocation in revocations:
            if begins <= revocation.occurred_on <= ends:
                ends = max(begins, dates.previous_day(revocation.occurred_on))
                note = timeline_text("arc_revoked_on", lang, day=revocation.occurred_on)
                events.append(revocation.event_id)
                classes.append("revoked")
                break
        head = f"{timeline_text('arc_valid', lang)} {begins} – {valid_until}"
        if note:
            head += _aside(note, lang)
        rule = "R-CEASED" if "revoked" in classes else None
        items.append(_Item("arc", classes, begins, ends, head, cite.cite(rule, events)))
    return items


def _overstay_last_day(since: date, counted: list[Fact], as_of: date) -> date:
    """A resolved overstay's last day: its departure day, or the day before a new ARC."""
    ends = [as_of]
    for fact in counted:
        if since <= fact.occurred_on <= as_of:
            if fact.type == "departed":
                ends.append(fact.occurred_on)
            elif fact.type == "arc_issued":
                ends.append(dates.previous_day(fact.occurred_on))
    return max(since, min(ends))


def _overstays(
    history: StudentView, counted: list[Fact], as_of: date, lang: Lang, cite: _Citations
) -> list[_Item]:
    """The overstays of the view: the running one, and those its overstay fines record."""
    spans: dict[date, date] = {}
    for fine in history.fines:
        if fine.kind == "overstay" and fine.rule == "R-OVERSTAY":
            spans[fine.accrued_on] = _overstay_last_day(fine.accrued_on, counted, as_of)
    current = history.overstay
    if current is not None:
        # The view's own numbers: `days` run from valid_until, so day 1 is `since`.
        spans[current.since] = dates.days_after(current.since, max(current.days - 1, 0))
    items = []
    for since, last in sorted(spans.items()):
        fine = next(
            (f for f in history.fines if f.kind == "overstay" and f.accrued_on == since), None
        )
        days = dates.days_between(since, last) + 1
        parts = [
            f"{timeline_text('overstay', lang)} {since} – {last}",
            timeline_text("overstay_days", lang, n=days),
        ]
        if current is not None and current.since == since:
            parts.append(ntd(current.fine_ntd))
            parts.append(
                timeline_text("can_reapply" if current.can_reapply else "cannot_reapply", lang)
            )
        elif fine is not None:
            parts.append(_amount(fine))
        events = fine.caused_by if fine is not None else []
        items.append(
            _Item(
                "overstay",
                ["overstay"],
                since,
                last,
                _sep(lang).join(parts),
                cite.cite("R-OVERSTAY", events),
            )
        )
    return items


def _amount(fine: Fine) -> str:
    if fine.amount_ntd is not None:
        return ntd(fine.amount_ntd)
    return ntd_range(fine.amount_min_ntd, fine.amount_max_ntd)


def _task_span(task: Task, cited: dict[str, list[Fact]], as_of: date) -> tuple[date, date]:
    """The days a task's main bar covers: opening (or its cause) to its due day."""
    cause_days = [f.occurred_on for e in task.caused_by[:1] for f in cited.get(e, [])]
    first = task.opens_on or (min(cause_days) if cause_days else None)
    first = first or task.due_on or task.done_on or as_of
    if task.due_on is not None:
        last = task.due_on
    elif task.done_on is not None:
        last = task.done_on
    elif task.status in ("open", "upcoming", "overdue"):
        last = max(as_of, first)  # no deadline (A-NO-DEADLINE): open until done
    else:
        last = first
    return min(first, last), max(first, last)


def _task_words(task: Task, as_of: date, lang: Lang) -> str:
    status = name(TASK_STATUS_NAMES, task.status, lang)
    parts = [name(TASK_NAMES, task.kind, lang) + timeline_text("name_sep", lang) + status]
    if task.opens_on is not None:
        parts.append(timeline_text("opens", lang, day=task.opens_on))
    if task.due_on is None:
        parts.append(timeline_text("no_due", lang))
    else:
        due = timeline_text("due", lang, day=task.due_on)
        if task.status in ("open", "upcoming", "overdue"):
            left = dates.days_between(as_of, task.due_on)
            if left > 0:
                due += _aside(timeline_text("days_left", lang, n=left), lang)
            elif left == 0:
                due += _aside(timeline_text("due_today", lang), lang)
            else:
                due += _aside(timeline_text("days_overdue", lang, n=-left), lang)
        parts.append(due)
    if task.done_on is not None:
        parts.append(timeline_text("done_on", lang, day=task.done_on))
    parts.append(name(WHERE_NAMES, task.where, lang))
    if task.fee_ntd:
        parts.append(timeline_text("fee", lang, amount=ntd(task.fee_ntd)))
    return _sep(lang).join(parts)


def _fine_words(fine: Fine, lang: Lang) -> str:
    title = name(FINE_NAMES, fine.kind, lang)
    if fine.offense:
        title += _aside(timeline_text("offense", lang, n=fine.offense), lang)
    parts = [
        title + timeline_text("name_sep", lang) + name(FINE_STATUS_NAMES, fine.status, lang),
        timeline_text("accrued_on", lang, day=fine.accrued_on),
        timeline_text("range", lang, amount=ntd_range(fine.amount_min_ntd, fine.amount_max_ntd)),
    ]
    if fine.amount_ntd is not None:
        parts.append(timeline_text("imposed", lang, amount=ntd(fine.amount_ntd)))
    parts.append(timeline_text("paid", lang, amount=ntd(fine.paid_ntd)))
    owed = (fine.amount_ntd if fine.amount_ntd is not None else fine.amount_min_ntd) - fine.paid_ntd
    parts.append(timeline_text("outstanding", lang, amount=ntd(max(owed, 0))))
    return _sep(lang).join(parts)


# -- drawing ---------------------------------------------------------------------------------
def _rect(x: float, y: float, width: float, height: float, cls: str | None = None) -> str:
    return _tag("rect", {"class": cls, "x": x, "y": y, "width": width, "height": height})


def _diamond(cx: float, cy: float, r: float) -> str:
    points = f"M{_num(cx)} {_num(cy - r)}L{_num(cx + r)} {_num(cy)}L{_num(cx)} {_num(cy + r)}"
    return _tag("path", {"d": f"{points}L{_num(cx - r)} {_num(cy)}Z"})


def _item_markup(item: _Item, as_of: date, tip_y: float, lang: Lang) -> str:
    classes = ["item", *item.classes]
    if item.first > as_of:
        classes.append("after")
    tip = _tag(
        "g",
        {"class": "tip", "visibility": "hidden", "aria-hidden": "true"},
        _rect(0.0, tip_y - 14, float(WIDTH), float(TIP_HEIGHT - 4))
        + _tag("text", {"x": 8.0, "y": tip_y + 2}, _text(_clip(item.head, 150)))
        + _tag("text", {"x": 8.0, "y": tip_y + 20}, _text(_clip(item.detail, 150))),
    )
    return _tag(
        "g",
        {
            "class": " ".join(classes),
            "tabindex": "0",
            "role": "img",
            "aria-label": item.label(lang),
            "data-kind": item.kind,
            "data-start": item.first.isoformat(),
            "data-end": item.last.isoformat(),
        },
        _tag("title", {}, _text(item.label(lang))) + "".join(item.shapes) + tip,
    )


def render_timeline(history: StudentView, facts: list[Fact], as_of: date, lang: str) -> Markup:
    """The student's whole history as an inline SVG, as of `as_of`, in `lang` (zh or en).

    `history` is the view as of `as_of` (tasks and fines are coloured by their status that
    day); `facts` is the student's stored stream (what the view counted is taken from it at
    the view's `known_at`). Deterministic: the same input gives the same bytes.
    """
    language = lang_of(lang)
    counted = known_facts(facts, history.known_at)
    cite = _Citations(counted, language)  # the view cites only facts it counted
    tasks = list(history.tasks)
    presence_until = max([as_of, *(f.occurred_on for f in counted)])
    presence = _presence(counted, presence_until, language, cite)
    arcs = _arcs(counted, language, cite)
    overstays = _overstays(history, counted, as_of, language, cite)
    spans = [_task_span(t, cite.facts, as_of) for t in tasks]

    days: list[date] = [as_of, *(f.occurred_on for f in counted)]
    for item in (*presence, *arcs, *overstays):
        days += [item.first, item.last]
    for task, (first, last) in zip(tasks, spans, strict=True):
        days += [first, last, *(d for d in (task.done_on,) if d is not None)]
    days += [f.accrued_on for f in history.fines]
    axis = Axis.spanning(days)

    lanes = [
        timeline_text("lane_presence", language),
        timeline_text("lane_arc", language),
        *(name(TASK_NAMES, t.kind, language) for t in tasks),
        timeline_text("lane_fines", language),
    ]
    bottom = AXIS_HEIGHT + len(lanes) * LANE_HEIGHT
    height = bottom + TIP_HEIGHT
    tip_y = bottom + 20.0

    def bar_y(lane: int) -> float:
        return AXIS_HEIGHT + lane * LANE_HEIGHT + (LANE_HEIGHT - BAR_HEIGHT) / 2

    for item in presence:
        x, w = axis.bar(item.first, item.last)
        item.shapes.append(_rect(x, bar_y(0), w, float(BAR_HEIGHT)))
    for item in arcs:
        x, w = axis.bar(item.first, item.last)
        item.shapes.append(_rect(x, bar_y(1), w, float(BAR_HEIGHT)))
    for item in overstays:
        x, w = axis.bar(item.first, item.last)
        item.shapes.append(_rect(x, float(AXIS_HEIGHT), w, float(bottom - AXIS_HEIGHT)))

    task_items = []
    for lane, (task, (first, last)) in enumerate(zip(tasks, spans, strict=True), start=2):
        item = _Item(
            "task",
            ["task", task.status],
            first,
            last,
            _task_words(task, as_of, language),
            cite.cite(task.rule, task.caused_by),
        )
        y = bar_y(lane)
        x, w = axis.bar(first, last)
        item.shapes.append(_rect(x, y, w, float(BAR_HEIGHT), "main"))
        late_until = task.done_on if task.status == "done_late" else None
        if task.status == "overdue":
            late_until = as_of
        if task.due_on is not None and late_until is not None and late_until > task.due_on:
            lx, lw = axis.bar(dates.next_day(task.due_on), late_until)
            item.shapes.append(_rect(lx, y, lw, float(BAR_HEIGHT), "late"))
            item.last = late_until
        if task.done_on is not None and task.status in DONE:
            item.shapes.append(
                _tag(
                    "circle",
                    {
                        "class": "done-mark",
                        "cx": axis.middle(task.done_on),
                        "cy": y + BAR_HEIGHT / 2,
                        "r": 4.0,
                    },
                )
            )
        task_items.append(item)

    fine_items = []
    fines_lane = len(lanes) - 1
    same_day: dict[date, int] = {}
    for fine in history.fines:
        stacked = same_day.get(fine.accrued_on, 0)
        same_day[fine.accrued_on] = stacked + 1
        item = _Item(
            "fine",
            ["fine", fine.status],
            fine.accrued_on,
            fine.accrued_on,
            _fine_words(fine, language),
            cite.cite(fine.rule, fine.caused_by),
        )
        cx = axis.middle(fine.accrued_on) + stacked * 9.0  # fines of one day side by side
        item.shapes.append(_diamond(cx, bar_y(fines_lane) + BAR_HEIGHT / 2, 7.0))
        fine_items.append(item)

    parts: list[str] = []
    for lane, label in enumerate(lanes):
        top = AXIS_HEIGHT + lane * LANE_HEIGHT
        if lane % 2 == 0:
            parts.append(_rect(0.0, float(top), float(WIDTH), float(LANE_HEIGHT), "lane-bg"))
        parts.append(
            _tag("text", {"class": "lane-label", "x": 8.0, "y": top + 17.0}, _text(_clip(label)))
        )
    for day, tick_label, year in axis.ticks():
        x = axis.x(day)
        parts.append(
            _tag(
                "line",
                {
                    "class": "grid year" if year else "grid",
                    "x1": x,
                    "y1": 22.0,
                    "x2": x,
                    "y2": float(bottom),
                },
            )
        )
        if tick_label:
            parts.append(_tag("text", {"class": "tick", "x": x + 2, "y": 16.0}, _text(tick_label)))
    decoration = _tag("g", {"class": "axis", "aria-hidden": "true"}, "".join(parts))

    items = [*overstays, *presence, *arcs, *task_items, *fine_items]
    body = "".join(_item_markup(item, as_of, tip_y, language) for item in items)

    line_x = axis.middle(as_of)
    as_of_text = timeline_text("as_of", language, day=as_of)
    if history.known_at is not None:
        moment = history.known_at.isoformat().replace("+00:00", "Z")
        as_of_text += _sep(language) + timeline_text("known_at", language, moment=moment)
    anchor = "end" if line_x > (PLOT_LEFT + PLOT_RIGHT) / 2 else "start"
    as_of_line = _tag(
        "g",
        {"class": "as-of", "role": "img", "aria-label": as_of_text, "data-day": as_of.isoformat()},
        _tag("title", {}, _text(as_of_text))
        + _tag("line", {"x1": line_x, "y1": 26.0, "x2": line_x, "y2": float(bottom)})
        + _tag(
            "text",
            {"x": line_x + (-4.0 if anchor == "end" else 4.0), "y": 36.0, "text-anchor": anchor},
            _text(timeline_text("as_of", language, day=as_of)),
        ),
    )

    title = timeline_text("title", language, student=history.student_id)
    svg = _tag(
        "svg",
        {
            "xmlns": "http://www.w3.org/2000/svg",
            "class": "timeline",
            "viewBox": f"0 0 {WIDTH} {height}",
            "preserveAspectRatio": "xMinYMin meet",
            "role": "group",
            "aria-label": title + _sep(language) + as_of_text,
            "lang": HTML_LANG[language],
            "data-from": axis.start.isoformat(),
            "data-to": dates.previous_day(axis.end).isoformat(),
            "data-as-of": as_of.isoformat(),
        },
        _tag("title", {}, _text(title + _sep(language) + as_of_text))
        + decoration
        + body
        + as_of_line,
    )
    return Markup(svg)
