"""Bilingual alert messages, written for the student (Traditional Chinese, then English).

`line_text` is the body of the LINE message for an alert: the same sentences, the
student's language first, headed by the student and the task in words.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from projections import dates
from projections.contact import Contact
from projections.rules import DOCUMENTS
from projections.wording import FINE_NAMES as FINE_TITLES
from projections.wording import TASK_NAMES as TASK_TITLES
from projections.wording import WHERE_DIRECTIONS, Bilingual, Lang

if TYPE_CHECKING:
    from scheduler.alert import Alert

TASK_NAMES: dict[str, tuple[str, str]] = {
    "apply_arc": ("申請外僑居留證", "apply for your Alien Resident Certificate (ARC)"),
    "apply_residence": ("申請居留", "apply for residence"),
    "extend_arc": ("申請外僑居留證延期", "apply to extend your ARC"),
    "submit_student_status": (
        "繳交在學證明以延長居留證",
        "submit proof of current student status to extend your ARC",
    ),
    "report_address_change": ("辦理居住地址異動", "report your change of address"),
    "report_workplace_change": ("辦理服務處所異動", "report your change of place of employment"),
    "pay_fine_and_reapply": (
        "繳納逾期居留罰鍰並重新申請居留（逾期居留未滿30日）",
        "pay the overstay fine and reapply for residence (possible only under 30 days of overstay)",
    ),
    "report_passport_loss": ("至服務站報告護照遺失", "report the loss of your passport in person"),
    "update_passport_details": ("辦理護照資料異動", "update your passport details"),
    "replace_arc": ("申請補發外僑居留證", "apply for a replacement ARC"),
    "leave_and_reapply_visa": ("出境並重新申請簽證", "leave Taiwan and reapply for a visa"),
    "reapply_visa": (
        "在境外申請簽證入境後，重新申請居留證",
        "apply for a new visa abroad, then for a new ARC at a service center",
    ),
    "report_and_surrender_arc": (
        "至服務站詢問離境期限並繳回居留證",
        "go to a service center to ask your departure deadline and hand back your ARC",
    ),
}
FINE_NAMES: dict[str, tuple[str, str]] = {
    "late_arc_application": ("逾期申請居留證罰鍰", "a fine for a late ARC application"),
    "late_details_update": (
        "未依規定變更居留證資料罰鍰",
        "a fine for a late change of ARC details",
    ),
    "overstay": ("逾期居留罰鍰", "an overstay fine"),
}
# Where to go, in the shared wording (projections.wording), as (zh, en) pairs.
PLACES: dict[str, tuple[str, str]] = {
    code: (entry["zh"], entry["en"]) for code, entry in WHERE_DIRECTIONS.items()
}


def _days_phrase(as_of: date, due: date | None) -> tuple[str, str]:
    if due is None:
        return ("無法定期限，請儘速辦理", "no legal deadline: please do it as soon as possible")
    left = dates.days_between(as_of, due)
    if left > 0:
        return (
            f"期限 {due.isoformat()}，尚餘 {left} 天",
            f"due {due.isoformat()}, {left} day{'s' if left != 1 else ''} left",
        )
    if left == 0:
        return (f"今天（{due.isoformat()}）為最後期限", f"due TODAY ({due.isoformat()})")
    return (
        f"已逾期 {-left} 天（期限 {due.isoformat()}）",
        f"{-left} day{'s' if left != -1 else ''} OVERDUE (due {due.isoformat()})",
    )


def task_message(
    kind: str,
    milestone: str,
    as_of: date,
    due: date | None,
    where: str,
    fee: int | None,
    rule: str,
) -> tuple[str, str]:
    """The zh and en texts for a task milestone."""
    zh_name, en_name = TASK_NAMES.get(kind, (kind, kind))
    zh_when, en_when = _days_phrase(as_of, due)
    zh_place, en_place = PLACES.get(where, (where, where))
    docs = DOCUMENTS.get(kind, ())
    zh_fee = f"規費新臺幣 {fee:,} 元。" if fee else ""
    en_fee = f"Fee: NTD {fee:,}. " if fee else ""
    zh_docs = ("應備文件：" + "；".join(z for _, z in docs) + "。") if docs else ""
    en_docs = ("Bring: " + "; ".join(e.rstrip(".") for e, _ in docs) + ". ") if docs else ""
    lead_zh, lead_en = {
        "window_open": ("現在可以", "You can now"),
        "overdue": ("您尚未", "You have not yet done this:"),
    }.get(milestone, ("提醒您", "Reminder: please"))
    zh = (
        f"{lead_zh}{zh_name}（{zh_when}）。辦理地點：{zh_place}。{zh_fee}{zh_docs}依據規則 {rule}。"
    )
    en = f"{lead_en} {en_name} ({en_when}). Where: {en_place}. {en_fee}{en_docs}Rule {rule}."
    if milestone == "overdue":
        zh += "逾期可能被處罰鍰，請立即辦理。"
        en += " A late filing can be fined: please act now."
    return zh, en


def fine_message(kind: str, accrued_on: date, low: int, high: int, rule: str) -> tuple[str, str]:
    """The zh and en texts for a fine that accrued."""
    zh_name, en_name = FINE_NAMES.get(kind, (kind, kind))
    zh_amount = f"新臺幣 {low:,} 元" if low == high else f"新臺幣 {low:,} 至 {high:,} 元"
    en_amount = f"NTD {low:,}" if low == high else f"NTD {low:,} to {high:,}"
    return (
        f"自 {accrued_on.isoformat()} 起可能被處{zh_name}：{zh_amount}（由移民署裁處）。"
        f"依據規則 {rule}。",
        f"From {accrued_on.isoformat()} you may be charged {en_name}: {en_amount} "
        f"(the NIA decides the amount). Rule {rule}.",
    )


def overstay_message(milestone: str, since: date, day: date, valid_until: date) -> tuple[str, str]:
    """The zh and en texts for an overstay milestone (R-OVERSTAY)."""
    days = dates.days_between(valid_until, day)
    if milestone == "overstay_started":
        return (
            f"您的外僑居留證已於 {valid_until.isoformat()} 到期，自 {since.isoformat()} 起逾期"
            "居留。逾期未滿30日且原居留原因仍存在者，經處罰鍰後得重新申請居留。"
            "依據規則 R-OVERSTAY。",
            f"Your ARC expired on {valid_until.isoformat()}: you are overstaying since "
            f"{since.isoformat()}. Under 30 days, and while you are still a student, you may "
            "reapply for residence after paying a fine. Rule R-OVERSTAY.",
        )
    if milestone == "reapply_window_closing":
        return (
            f"您已逾期居留 {days} 天。逾期居留30日（含第30天）以上者不得重辦居留，請儘速繳納"
            "罰鍰並重新申請居留。依據規則 R-OVERSTAY。",
            f"You have overstayed {days} days. From day 30 you can no longer reapply for "
            "residence here: pay the fine and reapply now. Rule R-OVERSTAY.",
        )
    return (
        f"您已逾期居留 {days} 天，不得重辦居留，須出境後重新申請簽證入境。依據規則 R-OVERSTAY。",
        f"You have overstayed {days} days: you may no longer reapply for residence and must "
        "leave Taiwan and reapply for a visa. Rule R-OVERSTAY.",
    )


OVERSTAY_TITLE: Bilingual = {"zh": "逾期居留", "en": "Overstay"}
REMINDER: Bilingual = {"zh": "居留證提醒", "en": "ARC reminder"}


def language_order(contact: Contact | None) -> tuple[Lang, Lang]:
    """The student's language first, the other second; Traditional Chinese first by default."""
    if contact is not None and contact.language == "en":
        return ("en", "zh")
    return ("zh", "en")


def title_of(task: str) -> Bilingual:
    """The name of an alert's `task` (a task kind, a fine kind, or `overstay`), as staff see it."""
    if task in TASK_TITLES:
        return TASK_TITLES[task]
    if task in FINE_TITLES:
        return FINE_TITLES[task]
    if task == "overstay":
        return OVERSTAY_TITLE
    return {"zh": task, "en": task}


def line_text(alert: Alert, contact: Contact | None) -> str:
    """The LINE text message for an alert: both languages, the student's first.

    Each language is a headline naming the student (by student id: the feed carries no
    name), the task in words and its due day, then the alert's message in that language.
    """
    title = title_of(alert.task)
    parts = []
    for lang in language_order(contact):
        due = alert.due_on.isoformat() if alert.due_on else None
        if lang == "zh":
            head = f"【{REMINDER['zh']}】{alert.student_id} 同學：{title['zh']}"
            head += f"，期限 {due}" if due else ""
            parts.append(f"{head}\n{alert.message.zh}")
        else:
            head = f"[{REMINDER['en']}] Student {alert.student_id}: {title['en']}"
            head += f", due {due}" if due else ""
            parts.append(f"{head}\n{alert.message.en}")
    return "\n\n".join(parts)
