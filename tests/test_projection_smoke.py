from facts_builder import Timeline, d

from projections.engine import view


def test_guide_example_entry_2024_03_16_apply_by_2024_04_15():
    t = Timeline()
    t.add("entered", "2024-03-16", visa="resident")
    on_due_day = view(t.facts, d("2024-04-15"))
    assert on_due_day.status == "arc_application_due"
    assert on_due_day.tasks[0].due_on == d("2024-04-15")
    assert on_due_day.fines == []
    day_after = view(t.facts, d("2024-04-16"))
    assert day_after.status == "arc_application_overdue"
    assert [(f.kind, f.accrued_on) for f in day_after.fines] == [
        ("late_arc_application", d("2024-04-16"))
    ]
