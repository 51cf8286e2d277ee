"""The staff app's wording in Traditional Chinese and English, one dict per kind of name.

Task, fine and status names follow the National Immigration Agency's bilingual guide
(`seed/arc-student-guide.txt`): its headings where it has one (外僑居留證遺失補發 /
Replacing a lost ARC), else its sentence (經處罰鍰後，得重新申請居留 / may reapply for
residency after paying a fine). Where the guide gives English only (the surrender of the
ARC) or no name at all (the staff-side statuses), the wording is ours and says so.

Every table maps a code (as the JSON carries it) to `{"zh": ..., "en": ...}`; `name()`
picks one language and falls back to the code itself for a code it does not know, so a
page never fails on a new kind.
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

# The words of the SVG timeline (web.timeline_svg).
TIMELINE_LABELS: dict[str, Bilingual] = {
    "title": {"zh": "{student} 的時間軸", "en": "Timeline of {student}"},
    "as_of": {"zh": "基準日 {day}", "en": "As of {day}"},
    "known_at": {"zh": "依 {moment} 時已知資料", "en": "as known at {moment}"},
    "lane_presence": {"zh": "在臺 / 出境", "en": "In / out of Taiwan"},
    "lane_arc": {"zh": "外僑居留證", "en": "ARC"},
    "lane_fines": {"zh": "罰鍰", "en": "Fines"},
    "in_taiwan": {"zh": "在臺灣", "en": "In Taiwan"},
    "abroad": {"zh": "在境外", "en": "Outside Taiwan"},
    "presence_assumed": {
        "zh": "無出入境紀錄，依申請推定在臺",
        "en": "no entry or departure on file: taken to be in Taiwan",
    },
    "arc_valid": {"zh": "居留證有效期間", "en": "ARC valid"},
    "arc_revoked_on": {"zh": "{day} 廢止", "en": "revoked {day}"},
    "arc_superseded_on": {"zh": "{day} 換發", "en": "superseded {day}"},
    "opens": {"zh": "開始 {day}", "en": "opens {day}"},
    "due": {"zh": "期限 {day}", "en": "due {day}"},
    "no_due": {"zh": "無法定期限", "en": "no legal deadline"},
    "done_on": {"zh": "完成 {day}", "en": "done {day}"},
    "days_left": {"zh": "尚餘 {n} 天", "en": "{n} days left"},
    "due_today": {"zh": "今天到期", "en": "due today"},
    "days_overdue": {"zh": "逾期 {n} 天", "en": "{n} days overdue"},
    "fee": {"zh": "規費 {amount}", "en": "fee {amount}"},
    "accrued_on": {"zh": "{day} 發生", "en": "accrued {day}"},
    "range": {"zh": "法定 {amount}", "en": "range {amount}"},
    "imposed": {"zh": "裁處 {amount}", "en": "imposed {amount}"},
    "paid": {"zh": "已繳 {amount}", "en": "paid {amount}"},
    "outstanding": {"zh": "未繳 {amount}", "en": "outstanding {amount}"},
    "offense": {"zh": "第 {n} 次", "en": "offense {n}"},
    "overstay": {"zh": "逾期居留", "en": "Overstay"},
    "overstay_days": {"zh": "{n} 天", "en": "{n} days"},
    "can_reapply": {"zh": "得重新申請居留", "en": "may reapply"},
    "cannot_reapply": {"zh": "不得重辦居留", "en": "may not reapply"},
    "rule": {"zh": "規則 {rule}", "en": "rule {rule}"},
    "events": {"zh": "事件：{events}", "en": "events: {events}"},
    "no_events": {"zh": "無事件", "en": "no events"},
    # Punctuation: full-width in Chinese text.
    "list_sep": {"zh": "，", "en": ", "},
    "name_sep": {"zh": "：", "en": ": "},
    "clause_sep": {"zh": "。", "en": ". "},
    "cite_sep": {"zh": "；", "en": "; "},
    "aside": {"zh": "（{text}）", "en": " ({text})"},
}


def timeline_text(key: str, lang: str, **values: object) -> str:
    """One TIMELINE_LABELS string in `lang`, its `{placeholders}` filled."""
    return TIMELINE_LABELS[key][lang_of(lang)].format(**values)
