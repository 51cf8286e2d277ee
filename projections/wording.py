"""The product's names in Traditional Chinese and English, one dict per kind of code.

Shared by every edge that speaks to people: the staff web app (`web.labels` re-exports
these tables), the alert e-mails and LINE messages (`scheduler.mail`, `scheduler.messages`).
Task, fine and status names follow the National Immigration Agency's bilingual guide
(`seed/arc-student-guide.txt`): its headings where it has one (外僑居留證遺失補發 /
Replacing a lost ARC), else its sentence (經處罰鍰後，得重新申請居留 / may reapply for
residency after paying a fine). Where the guide gives English only (the surrender of the
ARC) or no name at all (the staff-side statuses), the wording is ours and says so.

Every table maps a code (as the JSON carries it) to `{"zh": ..., "en": ...}`; `name()`
picks one language and falls back to the code itself for a code it does not know, so a
page or a message never fails on a new kind. Pure data: no I/O.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["zh", "en"]
Bilingual = dict[str, str]

LANGS: tuple[Lang, ...] = ("zh", "en")
# The BCP 47 tag for the `lang` attribute of a page or an inline SVG in that language.
HTML_LANG: dict[Lang, str] = {"zh": "zh-Hant-TW", "en": "en"}


def lang_of(value: str | None) -> Lang:
    """`zh`, `zh-TW`, `zh-Hant`… → `zh`; anything else (None, `en`, `en-GB`) → `en`."""
    return "zh" if (value or "").strip().lower().startswith("zh") else "en"


def name(table: dict[str, Bilingual], code: str, lang: str) -> str:
    """The name of `code` in `lang` from one of the tables below (the code when unknown)."""
    entry = table.get(code)
    return entry[lang_of(lang)] if entry else code


def ntd(amount: int) -> str:
    """An amount as the guide writes it in English: `NTD 3,000` (both languages)."""
    return f"NTD {amount:,}"


def ntd_range(low: int, high: int) -> str:
    """`NTD 2,000–10,000` for a statutory range, `NTD 2,000` when both ends are equal."""
    return ntd(low) if low == high else f"NTD {low:,}–{high:,}"


# projections.rules.TASK_KINDS, named as the guide names the thing to do.
TASK_NAMES: dict[str, Bilingual] = {
    "apply_arc": {"zh": "申請外僑居留證", "en": "Apply for an ARC"},
    "apply_residence": {"zh": "申請居留", "en": "Apply for residence"},
    "extend_arc": {"zh": "外僑居留證延期", "en": "Extend the ARC"},
    "submit_student_status": {
        "zh": "繳交在學證明以延長居留證",
        "en": "Submit evidence of current student status",
    },
    "report_address_change": {"zh": "居住地異動", "en": "Report a change of address"},
    "report_workplace_change": {
        "zh": "服務處所異動",
        "en": "Report a change of place of employment",
    },
    "pay_fine_and_reapply": {
        "zh": "經處罰鍰後重新申請居留",
        "en": "Pay the fine and reapply for residency",
    },
    "report_passport_loss": {"zh": "護照遺失報告", "en": "Report the lost passport"},
    "update_passport_details": {"zh": "護照資料異動", "en": "Update passport details"},
    "replace_arc": {"zh": "外僑居留證遺失補發", "en": "Replace a lost ARC"},
    "leave_and_reapply_visa": {
        "zh": "出境並重新申請簽證入境",
        "en": "Leave Taiwan and reapply for a visa",
    },
    "reapply_visa": {
        "zh": "在境外申請簽證入境後重新申請居留證",
        "en": "Apply for a visa abroad, then reapply for an ARC",
    },
    # The guide gives this one in English only; the Chinese is ours.
    "report_and_surrender_arc": {
        "zh": "至服務站詢問離境期限並繳回居留證",
        "en": "Ask the departure deadline and hand back the ARC",
    },
}

# timeline.contract.FineKind.
FINE_NAMES: dict[str, Bilingual] = {
    "late_arc_application": {"zh": "逾時申辦外僑居留證", "en": "Late ARC application"},
    "late_details_update": {
        "zh": "未依規定變更外僑居留證資料",
        "en": "Failure to update ARC information as required",
    },
    "overstay": {"zh": "逾期居留", "en": "Overstay"},
}

# projections.models.Status: the student's status (staff wording; the guide's for the expiries).
STATUS_NAMES: dict[str, Bilingual] = {
    "revoked": {"zh": "居留許可已廢止", "en": "ARC revoked"},
    "overstay": {"zh": "境內逾期居留", "en": "Overstay (expired within Taiwan)"},
    "expired_abroad": {"zh": "境外逾期", "en": "Expired outside Taiwan"},
    "arc_application_overdue": {"zh": "逾期未申請居留證", "en": "ARC application overdue"},
    "arc_application_due": {"zh": "應申請居留證", "en": "ARC application due"},
    "application_pending": {"zh": "申請審核中", "en": "Application pending"},
    "extension_window": {"zh": "可申請延期", "en": "Extension window open"},
    "arc_valid": {"zh": "居留證有效", "en": "ARC valid"},
    "no_arc": {"zh": "無居留證", "en": "No ARC"},
}

# projections.models.TaskStatus.
TASK_STATUS_NAMES: dict[str, Bilingual] = {
    "upcoming": {"zh": "尚未開始", "en": "Upcoming"},
    "open": {"zh": "待辦理", "en": "Open"},
    "overdue": {"zh": "已逾期", "en": "Overdue"},
    "done": {"zh": "已完成", "en": "Done"},
    "done_late": {"zh": "逾期完成", "en": "Done late"},
    "cancelled": {"zh": "已取消", "en": "Cancelled"},
}

# projections.models.FineStatus.
FINE_STATUS_NAMES: dict[str, Bilingual] = {
    "accrued": {"zh": "待裁處", "en": "Accrued"},
    "imposed": {"zh": "已裁處", "en": "Imposed"},
    "paid": {"zh": "已繳清", "en": "Paid"},
}

# projections.rules.Where.
WHERE_NAMES: dict[str, Bilingual] = {
    "online": {"zh": "線上申辦", "en": "Online application"},
    "service_center": {"zh": "移民署服務站", "en": "NIA service center"},
    "overseas_mission": {"zh": "駐外館處", "en": "Overseas mission"},
}

# projections.rules.Where, as a message to the student says where to go.
WHERE_DIRECTIONS: dict[str, Bilingual] = {
    "online": {
        "zh": "移民署官網「學生線上申辦系統」",
        "en": "online, in the NIA Students Online Application System",
    },
    "service_center": {
        "zh": "移民署各縣市服務站（須親自前往）",
        "en": "in person at an NIA service center",
    },
    "overseas_mission": {
        "zh": "我國駐外館處",
        "en": "at a Republic of China (Taiwan) embassy or mission abroad",
    },
}

# scheduler.alerts milestones.
MILESTONE_NAMES: dict[str, Bilingual] = {
    "window_open": {"zh": "開始受理", "en": "Window opens"},
    "due_in_30": {"zh": "30 天後到期", "en": "Due in 30 days"},
    "due_in_14": {"zh": "14 天後到期", "en": "Due in 14 days"},
    "due_in_7": {"zh": "7 天後到期", "en": "Due in 7 days"},
    "due_in_1": {"zh": "明天到期", "en": "Due tomorrow"},
    "due_today": {"zh": "今天到期", "en": "Due today"},
    "overdue": {"zh": "已逾期", "en": "Overdue"},
    "accrued": {"zh": "罰鍰發生", "en": "Fine accrued"},
    "overstay_started": {"zh": "開始逾期居留", "en": "Overstay started"},
    "reapply_window_closing": {"zh": "重新申請期限將屆", "en": "Reapplication window closing"},
    "reapply_window_closed": {"zh": "不得重辦居留", "en": "Reapplication window closed"},
}

# timeline.contract event types (SPEC §2), for the history and the timeline's citations.
EVENT_NAMES: dict[str, Bilingual] = {
    "entered": {"zh": "入境", "en": "Entered Taiwan"},
    "visa_changed": {"zh": "改換居留簽證", "en": "Visa changed to resident"},
    "registered": {"zh": "註冊", "en": "Registered"},
    "arc_applied": {"zh": "申請居留證", "en": "ARC applied for"},
    "arc_issued": {"zh": "核發居留證", "en": "ARC issued"},
    "address_changed": {"zh": "變更居住地址", "en": "Address changed"},
    "workplace_changed": {"zh": "變更服務處所", "en": "Place of employment changed"},
    "contact_updated": {"zh": "更新聯絡方式", "en": "Contact updated"},
    "details_updated": {"zh": "完成資料異動", "en": "Details updated with the NIA"},
    "arc_lost": {"zh": "居留證遺失", "en": "ARC lost"},
    "passport_lost": {"zh": "護照遺失", "en": "Passport lost"},
    "passport_replaced": {"zh": "換發護照", "en": "Passport replaced"},
    "departed": {"zh": "出境", "en": "Left Taiwan"},
    "studies_ceased": {"zh": "停止就學", "en": "Studies ceased"},
    "arc_revoked": {"zh": "居留證廢止", "en": "ARC revoked"},
    "fine_imposed": {"zh": "裁處罰鍰", "en": "Fine imposed"},
    "fine_paid": {"zh": "繳納罰鍰", "en": "Fine paid"},
    "retracted": {"zh": "撤回", "en": "Retracted"},
}

# projections.engine anomaly kinds.
ANOMALY_NAMES: dict[str, Bilingual] = {
    "entered_twice": {"zh": "未出境又入境", "en": "Entered twice without leaving"},
    "entered_without_valid_arc": {
        "zh": "以無效居留證入境",
        "en": "Entered on an ARC that was not valid",
    },
    "stay_shorter_than_lead": {
        "zh": "停留期限不足 15 日",
        "en": "Stay shorter than the 15-day lead",
    },
    "valid_until_shortened": {"zh": "居留期限縮短", "en": "Validity shortened"},
    "departed_while_abroad": {"zh": "未入境又出境", "en": "Departed while abroad"},
    "fine_imposed_without_accrued_fine": {
        "zh": "裁處無對應之罰鍰",
        "en": "Fine imposed with no accrued fine",
    },
    "payment_without_fine": {"zh": "繳款無對應之罰鍰", "en": "Payment with no fine"},
}


# Field names shared by the staff pages (`web.labels.LABELS`) and the alert e-mails.
FIELD_NAMES: dict[str, Bilingual] = {
    "student_id": {"zh": "學號", "en": "Student id"},
    "task": {"zh": "事項", "en": "Task"},
    "due_on": {"zh": "期限", "en": "Due"},
    "days_left": {"zh": "剩餘天數", "en": "Days left"},
    "days_left_n": {"zh": "尚餘 {n} 天", "en": "{n} days left"},
    "due_today": {"zh": "今天到期", "en": "due today"},
    "overdue_n": {"zh": "已逾期 {n} 天", "en": "{n} days overdue"},
    "where": {"zh": "辦理地點", "en": "Where"},
    "fee": {"zh": "規費", "en": "Fee"},
    "documents": {"zh": "應備文件", "en": "Documents"},
    "rule": {"zh": "規則", "en": "Rule"},
    "fine": {"zh": "罰鍰", "en": "Fine"},
    "accrued_on": {"zh": "發生日", "en": "Accrued on"},
    "fine_range": {"zh": "法定罰鍰範圍", "en": "Range"},
    "overstay_since": {"zh": "逾期起日", "en": "Since"},
    "overstay_days": {"zh": "逾期天數", "en": "Days"},
}
