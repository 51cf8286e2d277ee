"""The readable, coloured rendering of a student view (`timeline show` without --json)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from projections import dates
from projections.models import StudentView

STATUS_STYLE = {
    "revoked": "bold red",
    "overstay": "bold red",
    "expired_abroad": "bold yellow",
    "arc_application_overdue": "bold red",
    "arc_application_due": "bold yellow",
    "application_pending": "cyan",
    "extension_window": "yellow",
    "arc_valid": "green",
    "no_arc": "dim",
}
TASK_STYLE = {
    "overdue": "red",
    "open": "yellow",
    "upcoming": "dim",
    "done": "green",
    "done_late": "magenta",
    "cancelled": "dim strike",
}


def _when(view: StudentView, due: object, status: str) -> str:
    if due is None or status in ("done", "done_late", "cancelled"):
        return ""
    left = dates.days_between(view.as_of, due)  # type: ignore[arg-type]
    if left > 0:
        return f"{left} day{'s' if left != 1 else ''} left"
    if left == 0:
        return "due today"
    return f"{-left} day{'s' if left != -1 else ''} overdue"


def render_view(view: StudentView) -> Group:
    """A status line, then tasks and fines tables, each row citing its rule."""
    known = f", as known at {view.known_at.isoformat()}" if view.known_at else ""
    head = Text.assemble(
        (f"{view.student_id}", "bold"),
        f" as of {view.as_of.isoformat()}{known}: ",
        (view.status, STATUS_STYLE.get(view.status, "")),
        f"   in Taiwan: {'yes' if view.in_taiwan else 'no'}",
    )
    lines: list[object] = [head]
    if view.arc:
        number = view.arc.number or "number unknown"
        lines.append(
            Text(
                f"ARC {number}: issued {view.arc.issued_on}, valid until "
                f"{view.arc.valid_until} (basis: {view.arc.basis})"
            )
        )
    if view.application:
        app = view.application
        lines.append(
            Text(
                f"Pending {app.application} application of {app.applied_on}; decision "
                f"expected {app.expected_decision_on} (R-PROCESSING)"
            )
        )
    if view.overstay:
        o = view.overstay
        lines.append(
            Text(
                f"Overstay since {o.since}: {o.days} days, fine NTD {o.fine_ntd:,}, "
                f"{'may reapply after paying' if o.can_reapply else 'may not reapply here'} "
                "(R-OVERSTAY)",
                style="red",
            )
        )
    tasks = Table(title="Tasks", expand=False)
    for column in ("task", "status", "opens", "due", "when", "where", "fee", "rule", "events"):
        tasks.add_column(column)
    for task in view.tasks:
        tasks.add_row(
            task.kind,
            Text(task.status, style=TASK_STYLE.get(task.status, "")),
            str(task.opens_on or "—"),
            str(task.due_on or "—"),
            _when(view, task.due_on, task.status)
            or (f"done {task.done_on}" if task.done_on else ""),
            task.where,
            f"NTD {task.fee_ntd:,}" if task.fee_ntd else "—",
            task.rule,
            ", ".join(task.caused_by),
        )
    fines = Table(title="Fines", expand=False)
    for column in ("fine", "status", "accrued", "amount", "paid", "rule", "events"):
        fines.add_column(column)
    for fine in view.fines:
        amount = (
            f"NTD {fine.amount_ntd:,}"
            if fine.amount_ntd is not None
            else f"NTD {fine.amount_min_ntd:,}–{fine.amount_max_ntd:,}"
            if fine.amount_min_ntd != fine.amount_max_ntd
            else f"NTD {fine.amount_min_ntd:,}"
        )
        label = fine.kind + (f" (offense {fine.offense})" if fine.offense else "")
        fines.add_row(
            label,
            fine.status,
            str(fine.accrued_on),
            amount,
            f"NTD {fine.paid_ntd:,}",
            fine.rule,
            ", ".join(fine.caused_by),
        )
    total = view.fines_total
    span = (
        f"NTD {total.min_ntd:,}"
        if total.min_ntd == total.max_ntd
        else f"NTD {total.min_ntd:,}–{total.max_ntd:,}"
    )
    lines.append(tasks if view.tasks else Text("No tasks.", style="dim"))
    lines.append(fines if view.fines else Text("No fines.", style="dim"))
    if view.fines:
        lines.append(Text(f"Fines total: {span}, paid NTD {total.paid_ntd:,}"))
    for anomaly in view.anomalies:
        lines.append(
            Text(
                f"anomaly {anomaly.kind} on {anomaly.on}: {anomaly.message} "
                f"({', '.join(anomaly.events)})",
                style="yellow",
            )
        )
    return Group(*lines)  # type: ignore[arg-type]


def plain_console(**options: Any) -> Console:
    """A console that prints stored text as it is: ids and notes are not rich markup.

    With markup on, an id such as `[/x]` raised `MarkupError` and `[bold]` or `:cat:`
    printed as a style or an emoji; styles are given as `Text` styles instead.
    """
    return Console(markup=False, emoji=False, **options)


def print_view(view: StudentView, console: Console | None = None) -> None:
    """Print the view for a person."""
    if console is None:
        console = plain_console()
        if not console.is_terminal:
            console = plain_console(width=160)  # pipes and files: wide rather than wrapped
    console.print(Panel(render_view(view), expand=False))
