"""The rules as dated data (the way OpenFisca dates its parameters).

Each rule id has its numbers, the date from which they hold, and the wording of the
guide (`seed/arc-student-guide.txt`) or the article of law behind them. A fact is judged
by the values in force on the day it happened: a changed law is a new dated value here,
never an `if` in the engine. Where the guide is silent, the choice is an *assumption*
or a *setting* with its own id, listed in the README's rules table (generated from this
module by `python -m projections.rules --markdown`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

EPOCH = date(1900, 1, 1)
Kind = Literal["rule", "assumption", "setting"]


@dataclass(frozen=True)
class Dated:
    """Values that hold from `since` on, with the citation that sets them."""

    since: date
    values: dict[str, Any]
    citation: str


@dataclass(frozen=True)
class Rule:
    """One rule id: what it derives, and its dated values."""

    id: str
    kind: Kind
    summary: str
    history: tuple[Dated, ...]

    def on(self, day: date) -> dict[str, Any]:
        """The values in force on `day`."""
        current = self.history[0]
        for dated in self.history:
            if dated.since <= day:
                current = dated
        return current.values

    def value(self, name: str, day: date) -> Any:
        """One value in force on `day`."""
        return self.on(day)[name]


GUIDE_APPLY = (
    "持「居留簽證」入境臺灣…請於入國後30日內…申請，逾時申辦，處新臺幣 2,000-10,000 元罰鍰 / "
    "must apply for an ARC online … within 30 days of arriving in Taiwan or within 30 days "
    "from the day following their visa being changed to a resident visa. A fine of between "
    "NTD 2,000 and NTD 10,000 will be imposed if a person fails to apply within this period."
)

_RULES: tuple[Rule, ...] = (
    Rule(
        "R-ARC-ENTRY",
        "rule",
        "Entry on a resident visa without a valid ARC: task apply_arc, due entry + N days. Every "
        "arrival starts its own clock (a departure cancels a pending apply_arc; the next entry "
        "opens a new one and, if missed, a new fine).",
        (
            Dated(
                EPOCH,
                {"days": 15, "fee_ntd": 1000},
                "Immigration Act Art. 22 before the 2023 amendment: 15 days.",
            ),
            Dated(
                date(2024, 1, 1),
                {"days": 30, "fee_ntd": 1000},
                "Immigration Act Art. 22 as amended (in force 2024-01-01); guide: "
                + GUIDE_APPLY
                + " Example: entry 2024-03-16 → apply by 2024-04-15. Fee: 費用:新臺幣1,000元.",
            ),
        ),
    ),
    Rule(
        "R-ARC-VISACHANGE",
        "rule",
        "Resident visa obtained in Taiwan: task apply_arc, due change + N days.",
        (
            Dated(
                EPOCH,
                {"days": 15, "fee_ntd": 1000},
                "Immigration Act Art. 22 before the 2023 amendment: 15 days.",
            ),
            Dated(
                date(2024, 1, 1),
                {"days": 30, "fee_ntd": 1000},
                "Immigration Act Art. 22 as amended; guide: 居留簽證換發之翌日起30日內 / "
                "within 30 days from the day following their visa being changed.",
            ),
        ),
    ),
    Rule(
        "R-ARC-LATE",
        "rule",
        "apply_arc not applied by its due day: fine late_arc_application (a range), "
        "accrued the day after the due day.",
        (
            Dated(
                EPOCH,
                {"min_ntd": 2000, "max_ntd": 10000},
                "Immigration Act Art. 85; guide: 逾時申辦，處新臺幣 2,000-10,000 元罰鍰.",
            ),
        ),
    ),
    Rule(
        "R-VISITOR",
        "rule",
        "Entry on an FS, FC or FR visitor visa: task apply_residence, due stay_until − N days; "
        "a stay shorter than N days is due on the entry day, with anomaly stay_shorter_than_lead.",
        (
            Dated(
                EPOCH,
                {"days": 15, "visa_codes": ("FS", "FC", "FR"), "fee_ntd": 1000},
                "Guide: 若是持 FS、FC 或 FR 停留簽證之學生，得於停留期限屆滿前15 日，於線上申辦"
                "系統申請居留 / students holding an FS, FC, or FR visitor visa may apply online "
                "for residence 15 days prior to the termination of their duration of stay.",
            ),
        ),
    ),
    Rule(
        "R-ADMISSION",
        "rule",
        "ARC issued on an admission notice: the 6-month ARC; task submit_student_status due "
        "on its valid_until, opening at the first registration after issue (replaces extend_arc).",
        (
            Dated(
                EPOCH,
                {"months": 6, "fee_ntd": 1000},
                "Guide: may use their admission notice … will initially receive an ARC for an "
                "approved stay of 6 months. After completing their registration and before that "
                "6-month period ends, they must submit documentary evidence that they are a "
                "current student to extend their ARC for another 6 months. (Fee: the extension "
                "fee, 新臺幣1,000元 — see A-ADMISSION-FEE.)",
            ),
        ),
    ),
    Rule(
        "R-EXTEND",
        "rule",
        "Any valid ARC: task extend_arc, opens valid_until − N calendar months (an ARC issued"
        " later than that: on its issue day), due valid_until.",
        (
            Dated(
                EPOCH,
                {"months": 3, "fee_ntd": 1000},
                "Guide: 應於居留期限屆滿前 3 個月內…申辦外僑居留證延期 / must apply for an "
                "extension … online … within 3 months of the date that their residency will "
                "expire (also from abroad). Fee: 新臺幣1,000元.",
            ),
        ),
    ),
    Rule(
        "R-PROCESSING",
        "rule",
        "Any application: expected decision on the N-th working day after the application day.",
        (
            Dated(
                EPOCH,
                {"working_days": 10},
                "Guide: 核辦天數約10個工作天 (不含假日) / Processing time: approximately 10 days "
                "(not counting weekends and public holidays).",
            ),
        ),
    ),
    Rule(
        "R-ADDRESS",
        "rule",
        "Change of address: task report_address_change, due change + N days.",
        (
            Dated(
                EPOCH, {"days": 15}, "Immigration Act Art. 31 before the 2023 amendment: 15 days."
            ),
            Dated(
                date(2024, 1, 1),
                {"days": 30},
                "Immigration Act Art. 31 as amended; guide: 外國人變更居留地址或服務處所時，應於"
                "30日內備妥文件辦理資料異動 / must … apply within 30 days to have this change "
                "recorded.",
            ),
        ),
    ),
    Rule(
        "R-WORKPLACE",
        "rule",
        "Change of place of employment: task report_workplace_change, due change + N days "
        "(online, no fee); a late one is an R-DETAILS-LATE offense like an address.",
        (
            Dated(
                EPOCH, {"days": 15}, "Immigration Act Art. 31 before the 2023 amendment: 15 days."
            ),
            Dated(
                date(2024, 1, 1),
                {"days": 30},
                "Immigration Act Art. 31 as amended; guide: 外國人變更居留地址或服務處所時，"
                "應於30日內備妥文件辦理資料異動，違規者，處新臺幣 2,000-10,000 元罰鍰 / "
                "A foreigner who changes their residential address or their place of "
                "employment must … apply within 30 days to have this change recorded.",
            ),
        ),
    ),
    Rule(
        "R-DETAILS-LATE",
        "rule",
        "A details update (address, place of employment, passport) not done by its due day: fine "
        "late_details_update by offense number (one sequence), accrued the day after the due day.",
        (
            Dated(
                EPOCH,
                {"tiers": (2000, 5000, 10000)},
                "Immigration Act Art. 85; guide table 未依規定變更外僑居留證資料 / Failure to "
                "update your ARC information as required: 1st offense NTD 2,000, 2nd NTD "
                "5,000, 3rd NTD 10,000.",
            ),
        ),
    ),
    Rule(
        "R-PASSPORT",
        "rule",
        "Passport lost: task report_passport_loss (service center); passport replaced: task "
        "update_passport_details (online, or with the next extension: due the ARC's valid_until).",
        (
            Dated(
                EPOCH,
                {},
                "Guide: If a passport is lost, the passport-holder must … visit a National "
                "Immigration Agency service center in person and report the loss. After getting "
                "a new passport … must go online and apply to have their passport details "
                "updated or have their passport details updated when they extend their "
                "residence certificate.",
            ),
        ),
    ),
    Rule(
        "R-ARC-LOST",
        "rule",
        "ARC lost: task replace_arc at a service center.",
        (
            Dated(
                EPOCH,
                {"fee_ntd": 500},
                "Guide: 外僑居留證遺失補發 / visit the National Immigration Agency service center "
                "… to apply for a replacement. Fee: 新臺幣500元.",
            ),
        ),
    ),
    Rule(
        "R-OVERSTAY",
        "rule",
        "In Taiwan after valid_until with no later ARC: status overstay, fine by days "
        "overstayed; reapplication only under N days: task pay_fine_and_reapply (service "
        "center) from overstay day 1, due day N − 1, cancelled on day N or at departure.",
        (
            Dated(
                EPOCH,
                {"tiers": None, "min_ntd": 2000, "max_ntd": 10000, "reapply_under_days": 30},
                "Immigration Act Art. 85 (before Art. 74-1 took effect): NTD 2,000–10,000; "
                "Art. 31(3): reapplication only when the overstay is under 30 days.",
            ),
            Dated(
                date(2024, 3, 1),
                {
                    "tiers": ((10, 10000), (30, 20000), (60, 30000), (90, 40000), (None, 50000)),
                    "reapply_under_days": 30,
                },
                "Immigration Act Art. 74-1 (from 2024-03-01); guide table 逾期天數: 10日以下 "
                "NTD 10,000; 11~30日 NTD 20,000; 31~60日 NTD 30,000; 61~90日 NTD 40,000; 91日以上 "
                "NTD 50,000. 逾期居留未滿30日，原申請居留原因仍繼續存在者，經處罰鍰後，得重新申請"
                "居留 / If a foreigner overstays … by less than 30 days and the reason for their "
                "original residency application continues to exist, they may reapply for "
                "residency after paying a fine. 逾期居留30日(含第30天)以上者，不得重辦居留 / A "
                "foreigner who overstays … by 30 days or more is not permitted to reapply for "
                "residence and must first leave Taiwan and then reapply for a visa.",
            ),
        ),
    ),
    Rule(
        "R-EXPIRED-ABROAD",
        "rule",
        "Out of Taiwan when the ARC expires: status expired_abroad, no fine; task reapply_visa; "
        "the apply_arc of the next resident-visa entry is at a service center.",
        (
            Dated(
                EPOCH,
                {},
                "Guide: 若居留證在境外逾期，應在境外申請簽證入境後，至服務站重新申請辦理居留證 / "
                "If a person's resident certificate expires while they are outside of Taiwan, "
                "they must apply for a visa for entry and then reapply for a resident "
                "certificate at a service center.",
            ),
        ),
    ),
    Rule(
        "R-ENTRIES",
        "rule",
        "Entry while holding a valid ARC: no new application.",
        (
            Dated(
                EPOCH,
                {},
                "Guide: A foreigner who has an ARC may make multiple entries into Taiwan during "
                "their permitted stay, without having to apply for a new ARC.",
            ),
        ),
    ),
    Rule(
        "R-CEASED",
        "rule",
        "Studies ceased (or ARC revoked): status revoked; task report_and_surrender_arc.",
        (
            Dated(
                EPOCH,
                {},
                "Guide: if the purpose for a student's residency ceases to exist … their ARC "
                "will be revoked … go to the National Immigration Agency service center … with "
                "their plane ticket for departure, passport, resident certificate, and evidence "
                "… to ask about the deadline for leaving Taiwan and hand back their resident "
                "certificate.",
            ),
        ),
    ),
    Rule(
        "R-FINES",
        "rule",
        "fine_imposed replaces a fine's range with the amount decided; fine_paid reduces what "
        "is outstanding.",
        (Dated(EPOCH, {}, "SPEC §3 (the NIA decides the amount within the legal range)."),),
    ),
    Rule(
        "R-DEADLINE-ROLLOVER",
        "setting",
        "Move a 'within N days' deadline that falls on a weekend or public holiday to the next "
        "working day. Off by default: every application here can be filed online on any day.",
        (
            Dated(
                EPOCH,
                {"enabled": False},
                "Administrative Procedure Act Art. 48(4); SPEC §3 default: off.",
            ),
        ),
    ),
    Rule(
        "R-VISITOR-READING",
        "setting",
        "How to read the guide's visitor-visa sentence: 'deadline' (default; due stay_until − 15, "
        "open from entry) or 'window' (opens stay_until − 15, due stay_until).",
        (Dated(EPOCH, {"reading": "deadline"}, "SPEC §3 R-VISITOR."),),
    ),
    Rule(
        "A-NO-DEADLINE",
        "assumption",
        "The guide sets no deadline for report_passport_loss, replace_arc, "
        "leave_and_reapply_visa, reapply_visa, nor for report_and_surrender_arc before the NIA "
        "sets leave_by: due_on is null and the task stays open until completed.",
        (Dated(EPOCH, {}, "SPEC §3: a task with no deadline in the guide has due_on null."),),
    ),
    Rule(
        "A-ADMISSION-FEE",
        "assumption",
        "submit_student_status is an extension of the 6-month ARC, so it carries the extension "
        "fee (NTD 1,000).",
        (Dated(EPOCH, {}, "Guide: extension fee 新臺幣1,000元; the guide names no other fee."),),
    ),
    Rule(
        "A-PRESENCE",
        "assumption",
        "Without any entry or departure on file, a student whose ARC was applied for or issued "
        "is taken to be in Taiwan (an initial application is made from Taiwan).",
        (Dated(EPOCH, {}, "Guide: apply within 30 days of arriving in Taiwan."),),
    ),
    Rule(
        "A-DEPARTURE-BEFORE-DUE",
        "assumption",
        "An apply_arc still within its period when the student departs is cancelled (no "
        "violation occurred); a new entry on a resident visa opens a new one.",
        (Dated(EPOCH, {}, "Guide: within 30 days of arriving in Taiwan."),),
    ),
    Rule(
        "A-REAPPLY-AT-CENTER",
        "assumption",
        "After an ARC expired abroad, every apply_arc opened until a new ARC is issued is at a "
        "service center (not online).",
        (
            Dated(
                EPOCH,
                {},
                "Guide: 至服務站重新申請辦理居留證 / reapply for a resident certificate at a "
                "service center.",
            ),
        ),
    ),
    Rule(
        "A-SHORT-STAY",
        "assumption",
        "A visitor stay shorter than the R-VISITOR lead: apply_residence opens and is due on the "
        "entry day (never before the arrival), reported as anomaly stay_shorter_than_lead.",
        (Dated(EPOCH, {}, "SPEC §3 R-VISITOR."),),
    ),
    Rule(
        "A-PAY-FINE-TASK",
        "assumption",
        "pay_fine_and_reapply opens on overstay day 1 and is due on the last day a reapplication "
        "is allowed (day N − 1 of R-OVERSTAY); it carries no fee of its own (the overstay fine "
        "is the fine) and lists the extension documents (the guide names none for it); done by "
        "arc_applied (reapplication or extension) or arc_issued; cancelled on day N, at "
        "departure, or when studies cease.",
        (
            Dated(
                EPOCH,
                {},
                "Guide: may reapply for residency after paying a fine (no list of documents); "
                "SPEC §3 R-OVERSTAY.",
            ),
        ),
    ),
    Rule(
        "A-WORKPLACE-DOCUMENTS",
        "assumption",
        "report_workplace_change lists the guide's change-of-address documents: the guide puts "
        "both changes under one heading (資料異動) and gives one list.",
        (Dated(EPOCH, {}, "Guide: 外僑居留證資料異動 Changing ARC details."),),
    ),
    Rule(
        "A-OVERSTAY-END",
        "assumption",
        "Overstay days stop at departure (the departure day counts) or the day before a new ARC "
        "is issued; the overstay fine is judged by the rule in force on its first day.",
        (Dated(EPOCH, {}, "SPEC §3 R-OVERSTAY: days = as-of − valid_until, frozen at departure."),),
    ),
)

RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}

Where = Literal["online", "service_center", "overseas_mission"]

# The guide's documents, as {en, zh} pairs, per task kind.
_FORM = ("One application form", "申請表")
_PASSPORT_VISA = ("Passport and resident visa, and a photocopy of each", "護照及居留簽證")
_PHOTO = (
    "One two-inch ID photo (the same specifications as for a National ID card)",
    "兩吋證件照(同身分證規格)",
)
_STUDENT_ID_INITIAL = (
    "Their student ID card with the registration stamp for the current semester, or a Current "
    "Student Status Certificate issued within the last month (an applicant who has not yet "
    "registered may submit their admission notice instead)",
    "蓋有當學期註冊章之學生證或1個月內開立之在學證明書(尚未註冊得以入學分發通知書替代)",
)
_STUDENT_ID = (
    "Their student ID card with the registration stamp for the current semester, or a Current "
    "Student Status Certificate issued within the last month.",
    "蓋有當學期註冊章之學生證或1個月內開立之在學證明",
)
_RESIDENCE_PROOF = (
    "Proof of residence (e.g. a rental lease, or a certificate issued by the educational "
    "institution regarding having accommodation at a particular address)",
    "居住地證明(如房屋契約或是學校開立地址之住宿證明)",
)
_APPLICATION_FORM = ("Application form", "申請書")
_APPLICATION_LETTER = ("Application letter", "申請書")
_PASSPORT = ("Passport", "護照")
_CURRENT_ARC = ("Their current ARC", "外僑居留證")
_ARC = ("ARC", "外僑居留證")
_AGENT = (
    "If the application is submitted by an agent, the applicant's written authority to do so.",
    "委託書(如有委託他人辦理)",
)

DOCUMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "apply_arc": (_FORM, _PASSPORT_VISA, _PHOTO, _STUDENT_ID_INITIAL, _RESIDENCE_PROOF),
    "apply_residence": (_FORM, _PASSPORT_VISA, _PHOTO, _STUDENT_ID_INITIAL, _RESIDENCE_PROOF),
    "extend_arc": (_APPLICATION_FORM, _PASSPORT, _CURRENT_ARC, _STUDENT_ID, _PHOTO, _AGENT),
    "submit_student_status": (_STUDENT_ID,),
    "replace_arc": (
        _APPLICATION_FORM,
        _PASSPORT,
        _PHOTO,
        ("Current Student Status Certificate", "在學證明"),
        (
            "Statement that ARC has been lost or evidence that the loss was reported to the police",
            "遺失居留證聲明書或報案證明",
        ),
    ),
    "report_address_change": (
        _APPLICATION_LETTER,
        _PASSPORT,
        _ARC,
        _PHOTO,
        (
            "A rental lease, or a certificate issued by the educational institution regarding "
            "having accommodation at a particular address",
            "房屋契約或是學校開立地址之住宿證明",
        ),
    ),
    "report_workplace_change": (
        _APPLICATION_LETTER,
        _PASSPORT,
        _ARC,
        _PHOTO,
        (
            "A rental lease, or a certificate issued by the educational institution regarding "
            "having accommodation at a particular address",
            "房屋契約或是學校開立地址之住宿證明",
        ),
    ),
    # A-PAY-FINE-TASK: the guide names no list; the extension documents.
    "pay_fine_and_reapply": (_APPLICATION_FORM, _PASSPORT, _CURRENT_ARC, _STUDENT_ID, _PHOTO),
    "report_passport_loss": (
        _APPLICATION_LETTER,
        (
            "Old passport and new passport (if reporting the loss of a passport, provide a "
            "photocopy of the lost passport)",
            "新、舊護照 (遺失案僅提供遺失護照影本)",
        ),
        _ARC,
        _PHOTO,
    ),
    "update_passport_details": (
        _APPLICATION_LETTER,
        (
            "Old passport and new passport (if reporting the loss of a passport, provide a "
            "photocopy of the lost passport)",
            "新、舊護照 (遺失案僅提供遺失護照影本)",
        ),
        _ARC,
        _PHOTO,
    ),
    # The guide gives this list in English only; the Chinese is ours.
    "report_and_surrender_arc": (
        ("Plane ticket for departure", "離境機票"),
        ("Passport", "護照"),
        ("Resident certificate", "外僑居留證"),
        ("Evidence that they have deferred or abandoned their studies", "休學或退學證明"),
    ),
    "leave_and_reapply_visa": (),
    "reapply_visa": (),
}


@dataclass(frozen=True)
class TaskKind:
    """Where a task of this kind is done by default and which rule prices it."""

    where: Where
    fee_rule: str | None


TASK_KINDS: dict[str, TaskKind] = {
    "apply_arc": TaskKind("online", "R-ARC-ENTRY"),
    "apply_residence": TaskKind("online", "R-VISITOR"),
    "extend_arc": TaskKind("online", "R-EXTEND"),
    "submit_student_status": TaskKind("online", "R-ADMISSION"),
    "report_address_change": TaskKind("online", None),
    "report_workplace_change": TaskKind("online", None),
    "pay_fine_and_reapply": TaskKind("service_center", None),
    "report_passport_loss": TaskKind("service_center", None),
    "update_passport_details": TaskKind("online", None),
    "replace_arc": TaskKind("service_center", "R-ARC-LOST"),
    "leave_and_reapply_visa": TaskKind("overseas_mission", None),
    "reapply_visa": TaskKind("overseas_mission", None),
    "report_and_surrender_arc": TaskKind("service_center", None),
}


@dataclass(frozen=True)
class RuleBook:
    """The rules plus the settings in force for one evaluation."""

    rules: dict[str, Rule] = field(default_factory=lambda: dict(RULES))
    deadline_rollover: bool = False
    visitor_reading: Literal["deadline", "window"] = "deadline"

    def __getitem__(self, rule_id: str) -> Rule:
        return self.rules[rule_id]

    def with_settings(self, **settings: Any) -> RuleBook:
        """A copy with settings changed (e.g. deadline_rollover=True)."""
        return replace(self, **settings)


DEFAULT_RULES = RuleBook()


def markdown_table() -> str:
    """The README's rules table, generated from the data so docs and code cannot drift."""
    lines = [
        "| id | kind | what it derives | in force from | values | source |",
        "|---|---|---|---|---|---|",
    ]
    for rule in _RULES:
        for dated in rule.history:
            since = "—" if dated.since == EPOCH else dated.since.isoformat()
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in dated.values.items()) or "—"
            cite = dated.citation.replace("|", "/")
            lines.append(
                f"| {rule.id} | {rule.kind} | {rule.summary} | {since} | {values} | {cite} |"
            )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def rulebook_from_env(env: dict[str, str] | Any) -> RuleBook:
    """Settings from `TIMELINE_DEADLINE_ROLLOVER` (1/0) and `TIMELINE_VISITOR_READING`.

    The one function that reads the rule settings; a value it does not know is a
    ValueError naming the setting (never silently the default: derived data would differ).
    """
    rollover = str(env.get("TIMELINE_DEADLINE_ROLLOVER", "")).strip().lower()
    if rollover not in _TRUE + _FALSE:
        raise ValueError("TIMELINE_DEADLINE_ROLLOVER must be 1 or 0 (also true/false, yes/no)")
    reading = str(env.get("TIMELINE_VISITOR_READING", "deadline")).strip().lower() or "deadline"
    if reading not in ("deadline", "window"):
        raise ValueError("TIMELINE_VISITOR_READING must be 'deadline' or 'window'")
    return DEFAULT_RULES.with_settings(deadline_rollover=rollover in _TRUE, visitor_reading=reading)


# The modules whose code decides what is derived: a change to any of them changes the
# fingerprint, so materialized data computed by older code is rebuilt, never trusted.
_DERIVING_MODULES = ("engine.py", "rules.py", "dates.py", "models.py")


@lru_cache(maxsize=1)
def _code_digest() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.blake2b(digest_size=8)
    for name in _DERIVING_MODULES:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes())
    return digest.hexdigest()


def rulebook_fingerprint(rules: RuleBook) -> str:
    """A short digest of everything derived data depends on: rule values, settings, code, holidays.

    Read models and the alert outbox store it; when it differs from the one in force, what
    they hold was computed under other rules and is rebuilt or re-checked.
    """
    import holidays

    material = {
        "rules": {
            rule_id: [[d.since.isoformat(), d.values] for d in rule.history]
            for rule_id, rule in sorted(rules.rules.items())
        },
        "deadline_rollover": rules.deadline_rollover,
        "visitor_reading": rules.visitor_reading,
        "holidays": holidays.__version__,
        "code": _code_digest(),
    }
    canonical = json.dumps(material, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


if __name__ == "__main__":  # pragma: no cover - documentation generator
    if "--markdown" in sys.argv:
        print(markdown_table())
