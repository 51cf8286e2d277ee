"""The student page's SVG timeline: structure, positions, accessibility, escaping.

Golden *structure* checks, not pixels: the SVG is parsed with xml.etree and its items are
found by class and `data-*` day attributes; x positions are recomputed here from the
documented axis (whole months, one day = one equal slice of the plot).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest
from facts_builder import Timeline, d

from projections.engine import view
from projections.models import StudentView
from timeline.facts import Fact
from timeline.ingest import ingest_file
from web.labels import TASK_NAMES
from web.timeline_svg import PLOT_LEFT, PLOT_RIGHT, TIMELINE_CSS, Axis, render_timeline

NS = "{http://www.w3.org/2000/svg}"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "feed.jsonl"


def svg_of(facts: list[Fact], as_of: str, lang: str = "en", **kw) -> ET.Element:
    """Render the view as of `as_of` and parse it."""
    day = d(as_of)
    v = view(facts, day, **kw)
    return ET.fromstring(str(render_timeline(v, facts, day, lang)))


def items(root: ET.Element, kind: str | None = None) -> list[ET.Element]:
    """The focusable items, optionally of one data-kind."""
    found = [g for g in root.iter(f"{NS}g") if "item" in g.get("class", "").split()]
    return [g for g in found if kind is None or g.get("data-kind") == kind]


def x_of(root: ET.Element, day: date) -> float:
    """Where `day` begins, from the axis the SVG declares (data-from … data-to)."""
    start = date.fromisoformat(root.get("data-from"))
    end = date.fromisoformat(root.get("data-to")) + timedelta(days=1)
    span = (end - start).days
    return PLOT_LEFT + (day - start).days * (PLOT_RIGHT - PLOT_LEFT) / span


def rect(item: ET.Element, cls: str | None = None) -> tuple[float, float]:
    """x and width of the item's (first, or `cls`) rect."""
    for r in item.findall(f"{NS}rect"):
        if cls is None or r.get("class") == cls:
            return float(r.get("x")), float(r.get("width"))
    raise AssertionError(f"no rect {cls!r} in {item.get('class')}")


def title_of(el: ET.Element) -> str:
    title = el.find(f"{NS}title")
    assert title is not None
    return title.text or ""


def late_entry() -> Timeline:
    """Entered on a resident visa 2024-03-16, no application: apply_arc due 2024-04-15."""
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident")
    return t


def overstayer() -> Timeline:
    """ARC valid until 2025-01-31, still in Taiwan afterwards."""
    t = Timeline()
    t.add("entered", "2024-02-20", visa="resident")
    t.add("arc_applied", "2024-03-04", application="initial")
    t.add("arc_issued", "2024-03-18", valid_until="2025-01-31")
    return t


def test_axis_runs_over_whole_months_and_days_are_equal_slices() -> None:
    axis = Axis.spanning([d("2024-03-16"), d("2024-05-02")])
    assert (axis.start, axis.end) == (d("2024-03-01"), d("2024-06-01"))
    width = (PLOT_RIGHT - PLOT_LEFT) / 92
    assert axis.x(d("2024-03-01")) == PLOT_LEFT
    assert axis.x(d("2024-06-01")) == pytest.approx(PLOT_RIGHT)
    assert axis.x(d("2024-04-16")) == pytest.approx(PLOT_LEFT + 46 * width)
    assert axis.middle(d("2024-04-16")) == pytest.approx(PLOT_LEFT + 46.5 * width)


def test_overdue_task_bar_runs_from_opening_to_due_day_then_late_to_the_as_of_day() -> None:
    root = svg_of(late_entry().facts, "2024-04-20")
    assert (root.get("data-from"), root.get("data-to")) == ("2024-03-01", "2024-04-30")
    (task,) = items(root, "task")
    assert "overdue" in task.get("class").split()
    x, w = rect(task, "main")
    assert x == pytest.approx(x_of(root, d("2024-03-16")), abs=0.01)
    assert x + w == pytest.approx(x_of(root, d("2024-04-16")), abs=0.01)
    lx, lw = rect(task, "late")
    assert lx == pytest.approx(x_of(root, d("2024-04-16")), abs=0.01)
    assert lx + lw == pytest.approx(x_of(root, d("2024-04-21")), abs=0.01)  # through 04-20
    assert (task.get("data-start"), task.get("data-end")) == ("2024-03-16", "2024-04-20")
    assert "5 days overdue" in title_of(task)


def test_fine_marker_sits_on_its_accrual_day() -> None:
    root = svg_of(late_entry().facts, "2024-04-20")
    (fine,) = items(root, "fine")
    path = fine.find(f"{NS}path").get("d")
    centre_x = float(re.match(r"M([\d.]+) ", path).group(1))
    day = d("2024-04-16")
    middle = (x_of(root, day) + x_of(root, day + timedelta(days=1))) / 2
    assert centre_x == pytest.approx(middle, abs=0.01)
    assert "accrued" in fine.get("class").split()
    assert "NTD 2,000–10,000" in title_of(fine)
    assert "R-ARC-LATE" in title_of(fine)


def as_of_x(root: ET.Element) -> float:
    line = next(g for g in root.iter(f"{NS}g") if g.get("class") == "as-of").find(f"{NS}line")
    assert line.get("x1") == line.get("x2")
    return float(line.get("x1"))


def test_as_of_line_moves_with_the_as_of_day_on_a_steady_axis() -> None:
    facts = overstayer().facts
    before, after = svg_of(facts, "2024-06-01"), svg_of(facts, "2024-09-01")
    assert before.get("data-from") == after.get("data-from") == "2024-02-01"
    assert before.get("data-to") == after.get("data-to") == "2025-01-31"
    for root, day in ((before, "2024-06-01"), (after, "2024-09-01")):
        middle = (x_of(root, d(day)) + x_of(root, d(day) + timedelta(days=1))) / 2
        assert as_of_x(root) == pytest.approx(middle, abs=0.01)
        assert root.get("data-as-of") == day
    assert as_of_x(after) > as_of_x(before)


def test_crossing_the_arc_expiry_draws_the_overstay_shading() -> None:
    facts = overstayer().facts
    last_valid = svg_of(facts, "2025-01-31")
    assert items(last_valid, "overstay") == []
    root = svg_of(facts, "2025-02-12")
    (shade,) = items(root, "overstay")
    x, w = rect(shade)
    assert x == pytest.approx(x_of(root, d("2025-02-01")), abs=0.01)
    assert x + w == pytest.approx(x_of(root, d("2025-02-13")), abs=0.01)  # through as-of day
    words = title_of(shade)
    assert "R-OVERSTAY" in words and "12 days" in words and "NTD 20,000" in words
    assert "e3" in words  # the ARC that ran out
    (fine,) = items(root, "fine")
    assert fine.get("data-start") == "2025-02-01"
    # The ARC bar ends on valid_until.
    (arc,) = items(root, "arc")
    ax, aw = rect(arc)
    assert ax + aw == pytest.approx(x_of(root, d("2025-02-01")), abs=0.01)


def test_resolved_overstay_is_shaded_until_the_day_before_the_new_arc() -> None:
    t = overstayer()
    t.add("arc_applied", "2025-02-05", application="reapplication")
    t.add("arc_issued", "2025-02-10", valid_until="2026-01-31")
    root = svg_of(t.facts, "2025-06-30")
    (shade,) = items(root, "overstay")
    assert (shade.get("data-start"), shade.get("data-end")) == ("2025-02-01", "2025-02-09")
    arcs = items(root, "arc")
    assert [a.get("data-start") for a in arcs] == ["2024-03-18", "2025-02-10"]


def test_presence_counts_the_departure_day_in_taiwan() -> None:
    t = Timeline()
    t.add("entered", "2024-03-01", visa="resident")
    t.add("departed", "2024-06-10")
    t.add("entered", "2024-07-01", visa="resident")
    root = svg_of(t.facts, "2024-08-15")
    spans = [
        (g.get("class").split()[2], g.get("data-start"), g.get("data-end"))
        for g in items(root, "presence")
    ]
    assert spans == [
        ("in", "2024-03-01", "2024-06-10"),
        ("out", "2024-06-11", "2024-06-30"),
        ("in", "2024-07-01", "2024-08-15"),
    ]


def test_titles_carry_rule_ids_and_causing_event_ids() -> None:
    t = late_entry()
    t.add("arc_applied", "2024-04-20", application="initial")
    t.add("arc_issued", "2024-05-02", valid_until="2025-04-30")
    t.add("address_changed", "2024-06-01", address="Room 1")
    v = view(t.facts, d("2024-07-01"))
    root = ET.fromstring(str(render_timeline(v, t.facts, d("2024-07-01"), "en")))
    tasks = items(root, "task")
    assert len(tasks) == len(v.tasks) == 3
    for task, element in zip(v.tasks, tasks, strict=True):
        words = title_of(element)
        assert task.rule in words
        for event_id in task.caused_by:
            assert event_id in words
    apply_arc = title_of(tasks[0])
    assert "e1 (Entered Taiwan, 2024-03-16)" in apply_arc
    assert "e2 (ARC applied for, 2024-04-20)" in apply_arc


def test_every_item_is_focusable_and_named_by_its_title() -> None:
    t = overstayer()
    t.add("departed", "2025-02-20")
    root = svg_of(t.facts, "2025-03-01")
    found = items(root)
    assert {g.get("data-kind") for g in found} == {"presence", "arc", "task", "fine", "overstay"}
    for g in found:
        assert g.get("tabindex") == "0"
        assert g.get("role") == "img"
        assert g.get("aria-label")
        assert title_of(g) == g.get("aria-label")
        tip = next(c for c in g if c.get("class") == "tip")
        assert tip.get("visibility") == "hidden" and tip.get("aria-hidden") == "true"
    # Decoration is hidden from screen readers; the whole has a name.
    axis = next(g for g in root if g.get("class") == "axis")
    assert axis.get("aria-hidden") == "true"
    assert root.get("role") == "group" and root.get("aria-label").startswith("Timeline of S1")


def hostile_facts() -> list[Fact]:
    """Stored facts with markup, quotes and an RLO in ids, and a hostile note.

    The contract refuses bidi controls today; this stream stands for rows stored before it
    did (the renderer must not trust the store).
    """
    t = Timeline("S<b>\"1'")
    t.add("entered", "2024-03-16", event_id='e"><script>alert(1)</script>', visa="resident")
    rows = [replace(f, note="<img src=x onerror=alert(1)> secret note") for f in t.facts]
    rows.append(replace(rows[0], event_id="e\u202egpj.exe", seq=9, type="departed", data={}))
    return rows


def test_hostile_ids_are_escaped_and_free_text_is_never_drawn() -> None:
    facts = hostile_facts()
    v = view(facts, d("2024-05-01"))
    raw = str(render_timeline(v, facts, d("2024-05-01"), "en"))
    root = ET.fromstring(raw)  # well-formed: nothing broke out of an attribute or a text
    assert [el.tag for el in root.iter() if "script" in el.tag.lower()] == []
    assert "<script" not in raw and "&lt;script&gt;" in raw
    assert "\u202e" not in raw and "e\\u202egpj.exe" in raw
    assert "secret note" not in raw and "onerror" not in raw
    assert root.get("aria-label").startswith("Timeline of S<b>\"1'")
    (task,) = items(root, "task")
    assert 'e"><script>alert(1)</script>' in title_of(task)


def test_renders_a_student_without_any_arc() -> None:
    t = Timeline()
    t.add("registered", "2024-09-09", semester="113-1")
    root = svg_of(t.facts, "2024-10-01")
    assert items(root, "arc") == [] and items(root, "presence") == [] and items(root) == []
    assert root.get("data-from") == "2024-09-01"
    empty = view([], d("2024-10-01"), student_id="S9")
    bare = ET.fromstring(str(render_timeline(empty, [], d("2024-10-01"), "zh")))
    assert bare.get("data-from") == "2024-10-01" and items(bare) == []


def test_many_tasks_get_one_lane_each_and_the_height_grows() -> None:
    t = Timeline()
    t.add("entered", "2024-01-02", visa="resident")
    for month in range(1, 13):
        for day in (3, 17):
            t.add("address_changed", f"2024-{month:02d}-{day:02d}", address="Room")
    few = svg_of(late_entry().facts, "2024-04-20")
    root = svg_of(t.facts, "2025-01-31")
    tasks = items(root, "task")
    assert len(tasks) == 25
    ys = [float(g.find(f"{NS}rect").get("y")) for g in tasks]
    assert ys == sorted(ys) and len(set(ys)) == 25
    height = float(root.get("viewBox").split()[3])
    assert height - float(few.get("viewBox").split()[3]) == pytest.approx(24 * 26)
    assert "late_details_update" not in ET.tostring(root, encoding="unicode")  # named, not coded
    assert len(items(root, "fine")) == 25  # 24 changes never reported, one ARC never applied


def test_width_is_a_viewbox_never_pixels() -> None:
    root = svg_of(late_entry().facts, "2024-04-20")
    assert root.get("width") is None and root.get("height") is None
    assert root.get("viewBox").startswith("0 0 960 ")
    assert "min-width" in TIMELINE_CSS and ".timeline-scroll{overflow-x:auto" in TIMELINE_CSS


def test_retracted_events_leave_nothing_on_the_timeline_known_after_the_retraction() -> None:
    t = late_entry()
    entered_at = t.facts[0].recorded_at
    t.add("retracted", "2024-03-20", retracts="e1", reason="wrong student")
    now = svg_of(t.facts, "2024-04-20")
    assert items(now) == []
    then = svg_of(t.facts, "2024-04-20", known_at=entered_at)
    assert [g.get("data-kind") for g in items(then)] == ["presence", "task", "fine"]


def test_facts_after_the_as_of_day_are_drawn_dimmed() -> None:
    facts = overstayer().facts
    root = svg_of(facts, "2024-03-01")  # before the application and the ARC
    (arc,) = items(root, "arc")
    assert "after" in arc.get("class").split()
    (presence,) = items(root, "presence")
    assert "after" not in presence.get("class").split()


def test_chinese_rendering_uses_the_guide_names_and_the_tag() -> None:
    root = svg_of(late_entry().facts, "2024-04-20", lang="zh-TW")
    assert root.get("lang") == "zh-Hant-TW"
    (task,) = items(root, "task")
    assert title_of(task).startswith("申請外僑居留證：已逾期")
    assert "規則 R-ARC-ENTRY" in title_of(task)
    (fine,) = items(root, "fine")
    assert "逾時申辦外僑居留證" in title_of(fine)


def test_every_status_class_has_a_colour_in_the_stylesheet() -> None:
    for cls in (
        "presence.in",
        "presence.out",
        "arc",
        "arc.revoked",
        "overstay",
        *(f"task.{s}" for s in ("upcoming", "open", "overdue", "done", "done_late", "cancelled")),
        *(f"fine.{s}" for s in ("accrued", "imposed", "paid")),
    ):
        assert f".{cls}>" in TIMELINE_CSS, cls


@pytest.fixture
def example_views(sqlite_store) -> list[tuple[StudentView, list[Fact]]]:
    """Every example student, ingested into a temporary store, as of the demo day."""
    ingest_file(sqlite_store, EXAMPLES)
    out = []
    for n in range(1001, 1013):
        facts = sqlite_store.stream(f"S{n}")
        assert facts, n
        out.append((view(facts, d("2025-06-30"), student_id=f"S{n}"), facts))
    return out


def test_every_example_student_renders_in_both_languages(example_views) -> None:
    kinds = set()
    for v, facts in example_views:
        for lang in ("en", "zh"):
            svg = str(render_timeline(v, facts, v.as_of, lang))
            assert svg == str(render_timeline(v, facts, v.as_of, lang))  # deterministic
            root = ET.fromstring(svg)
            assert len(items(root, "task")) == len(v.tasks)
            assert len(items(root, "fine")) == len(v.fines)
            overstays = {f.accrued_on for f in v.fines if f.rule == "R-OVERSTAY"}
            overstays |= {v.overstay.since} if v.overstay else set()
            assert len(items(root, "overstay")) == len(overstays)
            kinds |= {g.get("data-kind") for g in items(root)}
            if lang == "zh":
                for task in v.tasks:
                    assert TASK_NAMES[task.kind]["zh"] in svg
    assert kinds == {"presence", "arc", "task", "fine", "overstay"}


def test_the_overstaying_example_is_drawn_with_its_overstay(example_views) -> None:
    by_id = {v.student_id: (v, f) for v, f in example_views}
    v, facts = by_id["S1009"]
    assert v.status == "overstay"
    root = ET.fromstring(str(render_timeline(v, facts, v.as_of, "en")))
    (shade,) = items(root, "overstay")
    assert shade.get("data-start") == v.overstay.since.isoformat()
    revoked_v, revoked_facts = by_id["S1010"]
    assert revoked_v.status == "revoked"
    revoked = ET.fromstring(str(render_timeline(revoked_v, revoked_facts, v.as_of, "en")))
    assert any("revoked" in g.get("class").split() for g in items(revoked, "arc"))


CHROMIUM = os.environ.get("TIMELINE_TEST_CHROMIUM")


@pytest.mark.skipif(not CHROMIUM, reason="TIMELINE_TEST_CHROMIUM is not set (.ci/run sets it)")
def test_in_a_browser_focus_and_hover_show_one_tip_and_a_phone_scrolls_sideways(
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    t = overstayer()
    t.add("departed", "2025-02-20")
    facts = t.facts
    v = view(facts, d("2025-03-01"))
    svg = render_timeline(v, facts, d("2025-03-01"), "zh")
    (tmp_path / "timeline.css").write_text(TIMELINE_CSS, encoding="utf-8")
    page_file = tmp_path / "page.html"
    page_file.write_text(
        '<!doctype html><html lang="zh-Hant-TW"><meta charset="utf-8">'
        '<link rel="stylesheet" href="timeline.css">'
        f'<body><div class="timeline-scroll">{svg}</div></body></html>',
        encoding="utf-8",
    )
    visible_tips = (
        "[...document.querySelectorAll('svg .tip')]"
        ".filter(t => getComputedStyle(t).visibility === 'visible')"
        ".map(t => t.parentElement.getAttribute('data-kind'))"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 600})
            page.goto(page_file.as_uri())
            assert page.evaluate(visible_tips) == []
            page.keyboard.press("Tab")  # the first item: the overstay shading
            focused = page.evaluate("document.activeElement.getAttribute('aria-label')")
            assert focused.startswith("逾期居留 2025-02-01 – 2025-02-20")
            assert page.evaluate(visible_tips) == ["overstay"]
            tip_fill = page.evaluate(
                "getComputedStyle(document.activeElement.querySelector('.tip rect')).fill"
            )
            assert tip_fill == "rgb(255, 255, 255)"
            page.screenshot(path=str(tmp_path / "timeline-desktop.png"))
            page.mouse.move(0, 0)
            page.locator("g.item.fine > path").hover()
            assert sorted(page.evaluate(visible_tips)) == ["fine", "overstay"]  # hover + focus
            overdue_fill = page.evaluate(
                "getComputedStyle(document.querySelector('g.item.fine.accrued > path')).fill"
            )
            assert overdue_fill == "rgb(198, 40, 40)"
            page.set_viewport_size({"width": 390, "height": 700})
            widths = page.evaluate(
                "(() => { const w = document.querySelector('.timeline-scroll');"
                " return [w.clientWidth, w.scrollWidth,"
                " document.querySelector('svg.timeline').getBoundingClientRect().width]; })()"
            )
            client, scroll, drawn = widths
            assert client <= 390 and scroll > client and drawn >= 760
            page.screenshot(path=str(tmp_path / "timeline-390.png"))
        finally:
            browser.close()
