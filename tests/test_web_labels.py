"""The bilingual names cover every code the views, the contract and the alerts carry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

import projections.engine
from projections.models import FineStatus, Status, TaskStatus
from projections.rules import TASK_KINDS, Where
from scheduler.alerts import DUE_MILESTONES
from timeline.contract import EVENT_TYPES, FINE_KINDS
from web.labels import (
    ANOMALY_NAMES,
    EVENT_NAMES,
    FINE_NAMES,
    FINE_STATUS_NAMES,
    MILESTONE_NAMES,
    STATUS_NAMES,
    TASK_NAMES,
    TASK_STATUS_NAMES,
    TIMELINE_LABELS,
    WHERE_NAMES,
    lang_of,
    name,
    ntd,
    ntd_range,
)

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize(
    ("table", "codes"),
    [
        (TASK_NAMES, set(TASK_KINDS)),
        (FINE_NAMES, set(FINE_KINDS)),
        (STATUS_NAMES, set(get_args(Status))),
        (TASK_STATUS_NAMES, set(get_args(TaskStatus))),
        (FINE_STATUS_NAMES, set(get_args(FineStatus))),
        (WHERE_NAMES, set(get_args(Where))),
        (EVENT_NAMES, set(EVENT_TYPES)),
    ],
    ids=["tasks", "fines", "statuses", "task statuses", "fine statuses", "where", "events"],
)
def test_every_code_has_a_chinese_and_an_english_name(table, codes) -> None:
    assert set(table) == codes
    for code, entry in table.items():
        assert set(entry) == {"zh", "en"}, code
        assert CJK.search(entry["zh"]), code
        assert entry["en"] and not CJK.search(entry["en"]), code


def test_alert_milestones_and_engine_anomalies_are_named() -> None:
    assert set(DUE_MILESTONES.values()) <= set(MILESTONE_NAMES)
    for code in ("window_open", "overdue", "accrued", "overstay_started"):
        assert code in MILESTONE_NAMES
    engine = Path(projections.engine.__file__).read_text(encoding="utf-8")
    raised = set(re.findall(r'self\.anomaly\(\s*"([a-z_]+)"', engine))
    assert raised and raised == set(ANOMALY_NAMES)


def test_the_guide_wording_is_used_for_its_named_things() -> None:
    assert TASK_NAMES["apply_arc"] == {"zh": "申請外僑居留證", "en": "Apply for an ARC"}
    assert TASK_NAMES["replace_arc"]["zh"] == "外僑居留證遺失補發"
    assert FINE_NAMES["late_details_update"]["zh"] == "未依規定變更外僑居留證資料"
    assert STATUS_NAMES["expired_abroad"] == {"zh": "境外逾期", "en": "Expired outside Taiwan"}


def test_name_picks_the_language_and_falls_back_to_the_code() -> None:
    assert name(TASK_NAMES, "apply_arc", "zh-TW") == "申請外僑居留證"
    assert name(TASK_NAMES, "apply_arc", "en") == "Apply for an ARC"
    assert name(TASK_NAMES, "apply_arc", "fr") == "Apply for an ARC"
    assert name(TASK_NAMES, "a_new_kind", "zh") == "a_new_kind"
    assert [lang_of(v) for v in ("zh", "ZH-tw", "zh-Hant", None, "", "en-GB")] == [
        "zh",
        "zh",
        "zh",
        "en",
        "en",
        "en",
    ]


def test_amounts_are_written_ntd_with_thousands() -> None:
    assert ntd(3000) == "NTD 3,000"
    assert ntd_range(2000, 10000) == "NTD 2,000–10,000"
    assert ntd_range(30000, 30000) == "NTD 30,000"  # never "30000–30000"


def test_timeline_labels_have_both_languages_and_the_same_placeholders() -> None:
    for key, entry in TIMELINE_LABELS.items():
        assert set(entry) == {"zh", "en"}, key
        holes = [set(re.findall(r"\{(\w+)\}", entry[lang])) for lang in ("zh", "en")]
        assert holes[0] == holes[1], key
