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


# The staff pages' own words (web.app and its templates): UI labels, one entry per key.
LABELS: dict[str, Bilingual] = {
    "app_name": {"zh": "外籍學生居留時程", "en": "Residency timeline"},
    "skip_to_content": {"zh": "跳至主要內容", "en": "Skip to main content"},
    "main_nav": {"zh": "主選單", "en": "Main menu"},
    "home": {"zh": "首頁", "en": "Home"},
    "language": {"zh": "語言", "en": "Language"},
    "switch_language": {"zh": "English", "en": "中文"},
    "switch_language_long": {"zh": "Switch to English", "en": "切換為中文"},
    "signed_in_as": {"zh": "已登入：", "en": "Signed in as"},
    "sign_in": {"zh": "登入", "en": "Sign in"},
    "sign_out": {"zh": "登出", "en": "Sign out"},
    "token": {"zh": "存取權杖", "en": "Access token"},
    "token_help": {
        "zh": "請輸入管理者發給您的存取權杖；登入後於本工作階段內不需再次輸入。",
        "en": "Enter the token you were given; you stay signed in for this session.",
    },
    "sign_in_failed": {"zh": "權杖不正確。", "en": "That token is not valid."},
    "sign_in_not_reader": {"zh": "此權杖不可查閱資料。", "en": "This token may not read records."},
    "session_ended": {
        "zh": "工作階段已結束，請重新登入。",
        "en": "Your session has ended: sign in again.",
    },
    "signed_out": {"zh": "您已登出。", "en": "You are signed out."},
    "search": {"zh": "搜尋", "en": "Search"},
    "search_students": {"zh": "以學號搜尋學生", "en": "Find a student by id"},
    "student_id_prefix": {"zh": "學號（開頭即可）", "en": "Student id (or its beginning)"},
    "no_students_found": {"zh": "找不到符合的學生。", "en": "No student matches."},
    "students_found": {"zh": "符合的學生", "en": "Matching students"},
    "lists": {"zh": "清單", "en": "Lists"},
    "list_overdue": {"zh": "逾期事項", "en": "Overdue tasks"},
    "list_due_soon": {"zh": "即將到期事項", "en": "Tasks due soon"},
    "list_fines": {"zh": "罰鍰", "en": "Fines"},
    "list_overstays": {"zh": "逾期居留", "en": "Overstays"},
    "audit": {"zh": "查閱紀錄", "en": "Access audit"},
    "api_docs": {"zh": "API 文件", "en": "API docs"},
    "student": {"zh": "學生", "en": "Student"},
    "student_id": {"zh": "學號", "en": "Student id"},
    "as_of": {"zh": "查詢日期（以此日為準）", "en": "As of (valid time)"},
    "as_of_short": {"zh": "查詢日期", "en": "As of"},
    "known_at": {"zh": "資料時點（當時已知）", "en": "As known at (record time)"},
    "known_at_short": {"zh": "資料時點", "en": "Known at"},
    "known_at_help": {
        "zh": "留白＝目前所知。格式 YYYY-MM-DD（當日結束）或 YYYY-MM-DDTHH:MM[:SS]（台北時間）。",
        "en": "Blank = everything known now. YYYY-MM-DD (end of that day) or "
        "YYYY-MM-DDTHH:MM[:SS] (Taipei time).",
    },
    "now": {"zh": "目前", "en": "now"},
    "redraw": {"zh": "重新顯示", "en": "Show"},
    "today": {"zh": "今天", "en": "Today"},
    "status": {"zh": "身分狀態", "en": "Status"},
    "in_taiwan": {"zh": "是否在台", "en": "In Taiwan"},
    "yes": {"zh": "是", "en": "yes"},
    "no": {"zh": "否", "en": "no"},
    "arc": {"zh": "外僑居留證", "en": "ARC"},
    "arc_number": {"zh": "居留證號", "en": "ARC number"},
    "issued_on": {"zh": "核發日", "en": "Issued on"},
    "valid_until": {"zh": "有效期限", "en": "Valid until"},
    "basis": {"zh": "依據", "en": "Basis"},
    "basis_registration": {"zh": "註冊", "en": "registration"},
    "basis_admission_notice": {"zh": "入學通知", "en": "admission notice"},
    "no_arc_held": {"zh": "未持有居留證。", "en": "No ARC held."},
    "application": {"zh": "審理中的申請", "en": "Pending application"},
    "applied_on": {"zh": "申請日", "en": "Applied on"},
    "expected_decision_on": {"zh": "預計核定日", "en": "Decision expected"},
    "overstay": {"zh": "逾期居留", "en": "Overstay"},
    "overstay_since": {"zh": "逾期起日", "en": "Since"},
    "overstay_days": {"zh": "逾期天數", "en": "Days"},
    "can_reapply": {"zh": "可否重新申請居留", "en": "Can reapply here"},
    "overstay_fine": {"zh": "逾期居留罰鍰", "en": "Overstay fine"},
    "no_overstay": {"zh": "無逾期居留。", "en": "No overstay."},
    "tasks": {"zh": "應辦事項", "en": "Tasks"},
    "no_tasks": {"zh": "無應辦事項。", "en": "No tasks."},
    "task": {"zh": "事項", "en": "Task"},
    "opens_on": {"zh": "開始日", "en": "Opens"},
    "due_on": {"zh": "期限", "en": "Due"},
    "done_on": {"zh": "完成日", "en": "Done on"},
    "days_left": {"zh": "剩餘天數", "en": "Days left"},
    "days_left_n": {"zh": "尚餘 {n} 天", "en": "{n} days left"},
    "due_today": {"zh": "今天到期", "en": "due today"},
    "overdue_n": {"zh": "已逾期 {n} 天", "en": "{n} days overdue"},
    "where": {"zh": "辦理地點", "en": "Where"},
    "fee": {"zh": "規費", "en": "Fee"},
    "documents": {"zh": "應備文件", "en": "Documents"},
    "state": {"zh": "狀態", "en": "Status"},
    "documents_n": {"zh": "應備文件 {n} 項", "en": "{n} documents"},
    "rule": {"zh": "規則", "en": "Rule"},
    "caused_by": {"zh": "相關事件", "en": "Caused by"},
    "fines": {"zh": "罰鍰", "en": "Fines"},
    "no_fines": {"zh": "無罰鍰。", "en": "No fines."},
    "fine": {"zh": "罰鍰", "en": "Fine"},
    "accrued_on": {"zh": "發生日", "en": "Accrued on"},
    "fine_range": {"zh": "法定罰鍰範圍", "en": "Range"},
    "imposed": {"zh": "裁處金額", "en": "Imposed"},
    "amount_min": {"zh": "法定最低額", "en": "Lowest amount"},
    "amount_max": {"zh": "法定最高額", "en": "Highest amount"},
    "paid": {"zh": "已繳", "en": "Paid"},
    "outstanding": {"zh": "未繳", "en": "Outstanding"},
    "offense": {"zh": "違規次數", "en": "Offense"},
    "total": {"zh": "合計", "en": "Total"},
    "anomalies": {"zh": "資料矛盾", "en": "Anomalies"},
    "no_anomalies": {"zh": "無資料矛盾。", "en": "No anomalies."},
    "anomaly_on": {"zh": "日期", "en": "On"},
    "message": {"zh": "說明", "en": "Message"},
    "events": {"zh": "事件", "en": "Events"},
    "history": {"zh": "事件紀錄", "en": "Event history"},
    "history_help": {
        "zh": "所有已儲存的事件，含記錄時間（台北時間）與撤回標記。",
        "en": "Every stored event, with its record time (Taipei time) and retraction marks.",
    },
    "event_id": {"zh": "事件編號", "en": "Event id"},
    "source": {"zh": "來源", "en": "Source"},
    "event_type": {"zh": "事件類型", "en": "Type"},
    "occurred_on": {"zh": "發生日", "en": "Occurred on"},
    "recorded_at": {"zh": "記錄時間", "en": "Recorded at"},
    "details": {"zh": "內容", "en": "Details"},
    "note": {"zh": "備註", "en": "Note"},
    "retracted": {"zh": "已撤回", "en": "Retracted"},
    "retracted_at_by": {"zh": "於 {at} 由 {by} 撤回", "en": "retracted at {at} by {by}"},
    "not_yet_known": {"zh": "於資料時點尚未記錄", "en": "not yet recorded at the known-at moment"},
    "view_known_here": {"zh": "以此時點檢視", "en": "View as known then"},
    "timeline": {"zh": "時間軸", "en": "Timeline"},
    "timeline_help": {
        "zh": "將游標移到項目上或以 Tab 鍵聚焦，可看到其規則與相關事件。",
        "en": "Hover over an item, or focus it with Tab, to see its rule and causing events.",
    },
    "what_changed": {
        "zh": "兩個資料時點之間的變化",
        "en": "What changed between two known-at moments",
    },
    "what_changed_help": {
        "zh": "例如：「為何週一的提醒說……？」比較當時所知與現在所知。",
        "en": "E.g. “why did the alert say X on Monday?”: compare what was known then and now.",
    },
    "known_from": {"zh": "從（資料時點 A）", "en": "From (known at A)"},
    "known_to": {"zh": "到（資料時點 B）", "en": "To (known at B)"},
    "compare": {"zh": "比較", "en": "Compare"},
    "changes_none": {
        "zh": "兩個時點之間沒有變化。",
        "en": "Nothing changed between the two moments.",
    },
    "changed_status": {"zh": "身分狀態", "en": "Status"},
    "changed_tasks": {"zh": "應辦事項", "en": "Tasks"},
    "changed_fines": {"zh": "罰鍰", "en": "Fines"},
    "events_between": {"zh": "期間記錄的事件", "en": "Events recorded in between"},
    "added": {"zh": "新增", "en": "added"},
    "removed": {"zh": "移除", "en": "removed"},
    "changed": {"zh": "變更", "en": "changed"},
    "before": {"zh": "之前", "en": "before"},
    "after": {"zh": "之後", "en": "after"},
    "kind": {"zh": "種類", "en": "Kind"},
    "all_kinds": {"zh": "全部種類", "en": "All kinds"},
    "filter": {"zh": "篩選", "en": "Filter"},
    "apply_filter": {"zh": "套用", "en": "Apply"},
    "sort": {"zh": "排序", "en": "Sort by"},
    "per_page": {"zh": "每頁筆數", "en": "Per page"},
    "page_n_of_m": {"zh": "第 {n} 頁，共 {m} 頁", "en": "Page {n} of {m}"},
    "rows_total": {"zh": "共 {n} 筆", "en": "{n} rows"},
    "previous": {"zh": "上一頁", "en": "Previous"},
    "next": {"zh": "下一頁", "en": "Next"},
    "download_csv": {"zh": "下載 CSV", "en": "Download CSV"},
    "download_excel": {
        "zh": "下載 Excel 用 CSV（UTF-8 BOM）",
        "en": "Download CSV for Excel (UTF-8 BOM)",
    },
    "json": {"zh": "JSON", "en": "JSON"},
    "days_ahead": {"zh": "未來天數", "en": "Days ahead"},
    "only_outstanding": {"zh": "僅列未繳清", "en": "Outstanding only"},
    "nothing_listed": {"zh": "沒有符合的項目。", "en": "Nothing to list."},
    "left_out": {
        "zh": "下列學生的資料無法推導，未列入：",
        "en": "These students' facts cannot be derived and are left out:",
    },
    "sort_student": {"zh": "學號", "en": "Student id"},
    "sort_due": {"zh": "期限（早到晚）", "en": "Due day (earliest first)"},
    "sort_due_desc": {"zh": "期限（晚到早）", "en": "Due day (latest first)"},
    "sort_kind": {"zh": "種類", "en": "Kind"},
    "sort_accrued": {"zh": "發生日（早到晚）", "en": "Accrued (earliest first)"},
    "sort_accrued_desc": {"zh": "發生日（晚到早）", "en": "Accrued (latest first)"},
    "sort_since": {"zh": "逾期起日（早到晚）", "en": "Since (earliest first)"},
    "sort_since_desc": {"zh": "逾期起日（晚到早）", "en": "Since (latest first)"},
    "last_day": {"zh": "最後逾期日（已離境）", "en": "Last day (departed)"},
    "audit_help": {
        "zh": "每次查閱學生紀錄（網頁或 API）皆記錄權杖名稱、時間與路徑；本表只能新增、不可修改。",
        "en": "Every view of a student's record (page or API) is logged with the token name, "
        "time and route; the table is append-only.",
    },
    "audit_at": {"zh": "時間（台北）", "en": "At (Taipei time)"},
    "token_name": {"zh": "權杖名稱", "en": "Token"},
    "route": {"zh": "路徑", "en": "Route"},
    "no_audit_rows": {"zh": "尚無查閱紀錄。", "en": "No views recorded yet."},
    "error": {"zh": "錯誤", "en": "Error"},
    "not_found": {"zh": "找不到此學生的紀錄。", "en": "No record of this student."},
    "forbidden": {"zh": "此權杖無權查看本頁。", "en": "This token may not see this page."},
    "bad_request": {"zh": "輸入有誤", "en": "Invalid input"},
    "cannot_derive": {
        "zh": "此學生的事件無法推導（請更正或撤回相關事件）。",
        "en": "This student's facts cannot be derived (correct or retract the events named).",
    },
    "back_home": {"zh": "回首頁", "en": "Back to the home page"},
    "amount_note": {"zh": "金額單位：新臺幣", "en": "Amounts in New Taiwan dollars"},
}
