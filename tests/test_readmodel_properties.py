"""The read models answer population queries exactly as the pure projection would."""

from __future__ import annotations

import tempfile
from datetime import date, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.engine import view
from projections.readmodel import ReadModel
from timeline.ingest import ingest_objects
from timeline.store import TimelineStore

START = date(2023, 11, 1)


def _day(offset: int) -> str:
    return (START + timedelta(days=offset)).isoformat()


@st.composite
def events(draw: st.DrawFn, student: str) -> list[dict]:
    """A random but contract-valid history of one student."""
    out = []
    for n in range(draw(st.integers(1, 12))):
        offset = draw(st.integers(0, 600))
        base = {"event_id": f"{student}-{n}", "student_id": student, "occurred_on": _day(offset)}
        kind = draw(
            st.sampled_from(
                [
                    "entered",
                    "entered_visitor",
                    "entered_arc",
                    "visa_changed",
                    "registered",
                    "arc_applied",
                    "arc_issued",
                    "address_changed",
                    "details_updated",
                    "arc_lost",
                    "passport_lost",
                    "passport_replaced",
                    "departed",
                    "studies_ceased",
                    "arc_revoked",
                    "fine_imposed",
                    "fine_paid",
                    "workplace_changed",
                    "contact_updated",
                    "left_and_back",
                    "short_arc",
                ]
            )
        )
        if kind == "entered":
            base |= {"type": "entered", "visa": "resident"}
        elif kind == "entered_visitor":
            base |= {
                "type": "entered",
                "visa": "visitor",
                "visa_code": "FS",
                "stay_until": _day(offset + draw(st.integers(20, 90))),
            }
        elif kind == "entered_arc":
            base |= {"type": "entered", "visa": "arc"}
        elif kind == "visa_changed":
            base |= {"type": "visa_changed", "to": "resident"}
        elif kind == "registered":
            base |= {"type": "registered", "semester": "113-1"}
        elif kind == "arc_applied":
            application = draw(st.sampled_from(["initial", "extension", "replacement"]))
            base |= {"type": "arc_applied", "application": application}
            if application == "initial":
                base["basis"] = draw(st.sampled_from(["registration", "admission_notice"]))
        elif kind == "arc_issued":
            base |= {
                "type": "arc_issued",
                "valid_until": _day(offset + draw(st.integers(0, 400))),
                "application": draw(st.sampled_from(["initial", "extension"])),
            }
        elif kind == "address_changed":
            base |= {"type": "address_changed", "address": "Somewhere"}
        elif kind == "details_updated":
            fields = [["address"], ["passport"], ["employer"], ["address", "employer"]]
            base |= {"type": "details_updated", "fields": draw(st.sampled_from(fields))}
        elif kind == "workplace_changed":
            base |= {"type": "workplace_changed"}
            if draw(st.booleans()):
                base["workplace"] = "Somewhere"
        elif kind == "contact_updated":
            base |= {"type": "contact_updated", "language": draw(st.sampled_from(["en", "zh"]))}
            if draw(st.booleans()):
                base["email"] = f"{student.lower()}@example.edu.tw"
        elif kind == "left_and_back":
            # every arrival starts its own clock (R-ARC-ENTRY): leave, come back on a visa
            out.append(base | {"type": "departed"})
            back = offset + draw(st.integers(1, 60))
            base = base | {"event_id": f"{student}-{n}b", "occurred_on": _day(back)}
            base |= {"type": "entered", "visa": "resident"}
        elif kind == "short_arc":
            # a short ARC: its overstay (and days 29/30, see _query_days) falls in the period
            base |= {"type": "arc_issued", "valid_until": _day(offset + draw(st.integers(0, 30)))}
        elif kind in ("arc_lost", "passport_lost", "departed"):
            base |= {"type": kind}
        elif kind == "passport_replaced":
            base |= {"type": "passport_replaced"}
        elif kind == "studies_ceased":
            base |= {"type": "studies_ceased", "reason": "withdrawn"}
        elif kind == "arc_revoked":
            base |= {"type": "arc_revoked", "leave_by": _day(offset + 10)}
        elif kind == "fine_imposed":
            base |= {
                "type": "fine_imposed",
                "fine": draw(
                    st.sampled_from(["late_arc_application", "overstay", "late_details_update"])
                ),
                "amount_ntd": draw(st.sampled_from([2000, 4000, 10000])),
            }
        else:
            base |= {"type": "fine_paid", "amount_ntd": draw(st.sampled_from([1000, 2000, 4000]))}
        out.append(base)
    return out


def _query_days(offsets: list[int], flat: list[dict]) -> list[date]:
    """The drawn days, plus overstay days 28-31 of the first ARC (the day 29/30 edges)."""
    days = [START + timedelta(days=offset) for offset in offsets]
    issued = [e for e in flat if e["type"] == "arc_issued"]
    if issued:
        valid_until = date.fromisoformat(issued[0]["valid_until"])
        days += [valid_until + timedelta(days=n) for n in (28, 29, 30, 31)]
    return days


def _task_rows(rows: list[dict]) -> list[tuple]:
    return sorted(
        (
            r["student_id"],
            r["kind"],
            r["status"],
            r["opens_on"],
            r["due_on"],
            r["done_on"],
            r["rule"],
            tuple(r["caused_by"]),
        )
        for r in rows
    )


def _fine_rows(rows: list[dict]) -> list[tuple]:
    return sorted(
        (
            r["student_id"],
            r["kind"],
            r["status"],
            r["accrued_on"],
            r["amount_min_ntd"],
            r["amount_max_ntd"],
            r["amount_ntd"],
            r["paid_ntd"],
            r["offense"],
            r["rule"],
            tuple(r["caused_by"]),
        )
        for r in rows
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    population=st.lists(
        st.sampled_from(["A", "B", "C", "D"]), min_size=1, max_size=4, unique=True
    ).flatmap(lambda ids: st.tuples(*[events(i) for i in ids])),
    days=st.lists(st.integers(0, 800), min_size=1, max_size=4),
)
def test_read_model_equals_pure_projection(population, days):
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "t.db")
        with TimelineStore.open(path) as store:
            flat = [e for history in population for e in history]
            report = ingest_objects(store, flat)
            assert report.ok, report.as_json()
            model = ReadModel(path)
            model.sync(store)
            streams = {h[0]["student_id"]: store.stream(h[0]["student_id"]) for h in population}
            for day in _query_days(days, flat):
                expected_tasks, expected_fines = [], []
                for sid, stream in streams.items():
                    v = view(stream, day, student_id=sid).model_dump(mode="json")
                    expected_tasks += [t | {"student_id": sid} for t in v["tasks"]]
                    expected_fines += [f | {"student_id": sid} for f in v["fines"]]
                assert _task_rows(model.tasks_on(day)) == _task_rows(expected_tasks)
                assert _fine_rows(model.fines_on(day)) == _fine_rows(expected_fines)
            model.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=events("A"), offsets=st.lists(st.integers(0, 800), min_size=1, max_size=5))
def test_the_overdue_index_path_agrees_with_the_full_scan(history, offsets):
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "t.db")
        with TimelineStore.open(path) as store:
            assert ingest_objects(store, history).ok
            model = ReadModel(path)
            model.sync(store)
            for offset in offsets:
                day = START + timedelta(days=offset)
                everything = [r for r in model.tasks_on(day) if r["status"] == "overdue"]
                assert model.tasks_on(day, ["overdue"]) == everything
            model.close()
