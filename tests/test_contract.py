"""The feed contract (SPEC §2): every type parses; every kind of mistake is named."""

from __future__ import annotations

import json
from datetime import date

import pytest
from click.testing import CliRunner
from feed_examples import ENVELOPE_REQUIRED, REQUIRED, VALID, example

from timeline.cli import main
from timeline.contract import EVENT_TYPES, json_schema, parse_event
from timeline.errors import ContractError

ALL_TYPES = sorted(VALID)


def rejected(raw) -> list[str]:
    """The messages `parse_event` rejects `raw` with (fails the test if it is accepted)."""
    with pytest.raises(ContractError) as info:
        parse_event(raw)
    assert info.value.messages, "a rejection must carry at least one message"
    assert str(info.value) == "; ".join(info.value.messages)
    return info.value.messages


def test_the_examples_cover_exactly_the_spec_types():
    spec_types = {
        "entered",
        "visa_changed",
        "registered",
        "arc_applied",
        "arc_issued",
        "address_changed",
        "workplace_changed",
        "contact_updated",
        "details_updated",
        "arc_lost",
        "passport_lost",
        "passport_replaced",
        "departed",
        "studies_ceased",
        "arc_revoked",
        "fine_imposed",
        "fine_paid",
        "retracted",
    }
    assert set(VALID) == spec_types
    assert set(EVENT_TYPES) == spec_types


# -- valid events ----------------------------------------------------------------------------
@pytest.mark.parametrize("type_", ALL_TYPES)
def test_valid_example_parses(type_):
    raw = example(type_, note="free text")
    event = parse_event(raw)
    assert event.type == type_
    assert event.event_id == raw["event_id"]
    assert event.student_id == "S1"
    assert event.occurred_on == date(2024, 3, 1)
    assert event.note == "free text"
    # the type-specific fields survive, dates as dates
    body = event.model_dump(mode="json")
    for name, value in VALID[type_].items():
        expected = value.upper() if name == "visa_code" else value
        assert body[name] == expected, name


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_minimal_example_parses_with_only_required_fields(type_):
    raw = {name: example(type_)[name] for name in (*ENVELOPE_REQUIRED, "type", *REQUIRED[type_])}
    if type_ == "entered":
        raw["visa"] = "resident"  # a visitor entry also needs stay_until
    if type_ == "contact_updated":
        raw["language"] = "zh"  # each field is optional, but one is required
    event = parse_event(raw)
    assert event.type == type_
    assert event.source == "manual"  # the envelope default
    assert event.note is None


def test_defaults_of_optional_fields():
    applied = parse_event(
        {
            "event_id": "a",
            "student_id": "S1",
            "type": "arc_applied",
            "occurred_on": "2024-03-01",
            "application": "extension",
        }
    )
    assert applied.basis == "registration"
    assert applied.by_agent is False
    issued = parse_event(
        {
            "event_id": "i",
            "student_id": "S1",
            "type": "arc_issued",
            "occurred_on": "2024-03-01",
            "valid_until": "2024-03-01",  # == occurred_on is allowed
        }
    )
    assert issued.application == "initial"
    assert issued.valid_until == date(2024, 3, 1)


@pytest.mark.parametrize("visa", ["resident", "arc"])
def test_entry_without_stay_until_is_fine_unless_visitor(visa):
    raw = example("entered", visa=visa)
    del raw["stay_until"]
    event = parse_event(raw)
    assert event.visa == visa
    assert event.stay_until is None


def test_boundary_lengths_are_accepted():
    event = parse_event(example("registered", event_id="e" * 128, student_id="s" * 64))
    assert len(event.event_id) == 128
    assert len(event.student_id) == 64


# -- unknown type / field, missing field ------------------------------------------------------
def test_unknown_type_is_rejected_naming_the_type():
    messages = rejected(example("entered", type="landed"))
    assert len(messages) == 1
    assert messages[0].startswith("type:")
    assert "'landed'" in messages[0]
    assert "entered" in messages[0]  # lists what is expected


def test_missing_type_is_rejected():
    raw = example("entered")
    del raw["type"]
    assert rejected(raw) == ["type: required field is missing"]


@pytest.mark.parametrize("not_an_object", [[1, 2], "entered", 3, None])
def test_non_object_is_rejected(not_an_object):
    messages = rejected(not_an_object)
    assert "JSON object" in messages[0]


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_unknown_field_is_rejected_naming_it(type_):
    messages = rejected(example(type_, colour="red"))
    assert len(messages) == 1
    assert messages[0].startswith("colour:")
    assert "unknown field" in messages[0]


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_recorded_at_cannot_be_set_by_clients(type_):
    messages = rejected(example(type_, recorded_at="2024-03-01T00:00:00Z"))
    assert messages[0].startswith("recorded_at:")


@pytest.mark.parametrize(
    ("type_", "field"),
    [(t, f) for t in ALL_TYPES for f in (*ENVELOPE_REQUIRED, *REQUIRED[t])],
)
def test_missing_required_field_is_rejected_naming_it(type_, field):
    raw = example(type_)
    del raw[field]
    messages = rejected(raw)
    assert f"{field}: required field is missing" in messages


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_field_of_another_type_is_unknown_here(type_):
    stranger = "semester" if type_ != "registered" else "visa"
    messages = rejected(example(type_, **{stranger: "x"}))
    assert any(m.startswith(f"{stranger}:") and "unknown field" in m for m in messages)


# -- dates -----------------------------------------------------------------------------------
BAD_DATES = [
    ("2024-02-30", "real calendar date"),
    ("2023-02-29", "real calendar date"),
    ("2024-3-1", "YYYY-MM-DD"),
    (20240301, "YYYY-MM-DD"),
    ("20240301", "YYYY-MM-DD"),
    ("2024-03-01T00:00:00", "YYYY-MM-DD"),
    ("01/03/2024", "YYYY-MM-DD"),
    ("", "YYYY-MM-DD"),
]


@pytest.mark.parametrize("type_", ALL_TYPES)
@pytest.mark.parametrize(("value", "reason"), BAD_DATES)
def test_bad_occurred_on_is_rejected(type_, value, reason):
    messages = rejected(example(type_, occurred_on=value))
    assert len(messages) == 1
    assert messages[0].startswith("occurred_on:")
    assert reason in messages[0]


@pytest.mark.parametrize(
    ("type_", "field"),
    [("entered", "stay_until"), ("arc_issued", "valid_until"), ("arc_revoked", "leave_by")],
)
@pytest.mark.parametrize(("value", "reason"), BAD_DATES[:4])
def test_bad_date_in_a_type_field_is_rejected(type_, field, value, reason):
    messages = rejected(example(type_, **{field: value}))
    assert len(messages) == 1
    assert messages[0].startswith(f"{field}:")
    assert reason in messages[0]


def test_arc_valid_until_before_issue_is_rejected():
    messages = rejected(example("arc_issued", occurred_on="2024-03-02", valid_until="2024-03-01"))
    assert messages == ["valid_until: must be on or after occurred_on"]


def test_visitor_stay_until_before_entry_is_rejected():
    messages = rejected(example("entered", occurred_on="2024-03-02", stay_until="2024-03-01"))
    assert len(messages) == 1
    assert messages[0].startswith("stay_until:")


def test_revocation_leave_by_before_revocation_is_rejected():
    messages = rejected(example("arc_revoked", occurred_on="2024-03-02", leave_by="2024-03-01"))
    assert len(messages) == 1
    assert messages[0].startswith("leave_by:")


def test_visitor_entry_without_stay_until_is_rejected():
    raw = example("entered", visa="visitor")
    del raw["stay_until"]
    messages = rejected(raw)
    assert len(messages) == 1
    assert messages[0].startswith("stay_until:")
    assert "visitor" in messages[0]


# -- lengths ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "length"), [("event_id", 129), ("student_id", 65), ("event_id", 0), ("student_id", 0)]
)
def test_bad_length_envelope_strings_are_rejected(field, length):
    messages = rejected(example("departed", **{field: "x" * length}))
    assert len(messages) == 1
    assert messages[0].startswith(f"{field}:")
    assert ("at most" if length else "at least") in messages[0]


@pytest.mark.parametrize(
    ("type_", "field", "length"),
    [
        ("address_changed", "address", 501),
        ("passport_replaced", "passport_number", 33),
        ("registered", "semester", 33),
        ("retracted", "retracts", 129),
    ],
)
def test_over_long_type_strings_are_rejected(type_, field, length):
    messages = rejected(example(type_, **{field: "x" * length}))
    assert any(m.startswith(f"{field}:") and "at most" in m for m in messages)


def test_blank_event_id_is_rejected():
    messages = rejected(example("departed", event_id="   "))
    assert messages[0].startswith("event_id:")


# -- enumerations and amounts ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("type_", "field", "value"),
    [
        ("entered", "visa", "tourist"),
        ("visa_changed", "to", "visitor"),
        ("arc_applied", "application", "renewal"),
        ("arc_applied", "basis", "passport"),
        ("arc_issued", "application", "first"),
        ("studies_ceased", "reason", "graduated"),
        ("fine_imposed", "fine", "speeding"),
        ("fine_paid", "fine", "speeding"),
    ],
)
def test_value_outside_an_enumeration_is_rejected(type_, field, value):
    messages = rejected(example(type_, **{field: value}))
    assert len(messages) == 1
    assert messages[0].startswith(f"{field}:")
    assert repr(value) in messages[0]


def test_details_updated_with_no_fields_is_rejected():
    messages = rejected(example("details_updated", fields=[]))
    assert len(messages) == 1
    assert messages[0].startswith("fields:")


def test_details_updated_with_an_unknown_field_value_is_rejected():
    messages = rejected(example("details_updated", fields=["address", "hair_colour"]))
    assert len(messages) == 1
    assert messages[0].startswith("fields")
    assert "'hair_colour'" in messages[0]


def test_details_updated_fields_must_be_a_list():
    messages = rejected(example("details_updated", fields="address"))
    assert messages[0].startswith("fields")


def test_details_updated_repeated_values_are_collapsed():
    event = parse_event(example("details_updated", fields=["address", "address", "employer"]))
    assert event.fields == ["address", "employer"]


@pytest.mark.parametrize(
    "email", ["s7+<office>@mail.tw", "office,s7@mail.tw", "office;s7@mail.tw", "list:s7@mail.tw"]
)
def test_an_email_a_mailer_reads_as_other_mailboxes_is_rejected(email):
    # `a<b>@x` is the mailbox "b", `a,b@x` two mailboxes, `a:b@x` a group holding "b@x".
    messages = rejected(example("contact_updated", email=email))
    assert len(messages) == 1 and messages[0].startswith("email: must look like an e-mail")
    assert email not in messages[0]  # personal data is never echoed


@pytest.mark.parametrize("email", ["first.last+arc@uni.edu.tw", "王@例子.台灣", "x@[192.0.2.1]"])
def test_plain_and_international_emails_are_accepted(email):
    assert parse_event(example("contact_updated", email=email)).email == email


@pytest.mark.parametrize("type_", ["fine_imposed", "fine_paid"])
@pytest.mark.parametrize("amount", [0, -1, -2000])
def test_non_positive_amount_is_rejected(type_, amount):
    messages = rejected(example(type_, amount_ntd=amount))
    assert len(messages) == 1
    assert messages[0].startswith("amount_ntd:")
    assert "greater than 0" in messages[0]


@pytest.mark.parametrize("type_", ["fine_imposed", "fine_paid"])
@pytest.mark.parametrize("amount", [12.5, "a lot"])
def test_non_integer_amount_is_rejected(type_, amount):
    messages = rejected(example(type_, amount_ntd=amount))
    assert messages[0].startswith("amount_ntd:")


@pytest.mark.parametrize("type_", ["fine_imposed", "fine_paid"])
def test_boolean_amount_is_rejected(type_):
    # JSON `true` is not an integer amount; it must not be read as NT$1.
    messages = rejected(example(type_, amount_ntd=True))
    assert messages[0].startswith("amount_ntd:")


@pytest.mark.parametrize("application", ["extension", "replacement", "reapplication"])
def test_admission_notice_basis_on_a_non_initial_application_is_rejected(application):
    messages = rejected(example("arc_applied", application=application))
    assert len(messages) == 1
    assert messages[0].startswith("basis:")
    assert "initial" in messages[0]


def test_retracted_without_retracts_is_rejected():
    raw = example("retracted")
    del raw["retracts"]
    assert rejected(raw) == ["retracts: required field is missing"]


def test_retraction_of_itself_is_rejected():
    messages = rejected(example("retracted", event_id="r1", retracts="r1"))
    assert len(messages) == 1
    assert messages[0].startswith("retracts:")


def test_several_mistakes_are_all_reported():
    raw = example("arc_issued", valid_until="2024-13-01", colour="red")
    del raw["student_id"]
    messages = rejected(raw)
    fields = {m.split(":", 1)[0] for m in messages}
    assert {"valid_until", "colour", "student_id"} <= fields


# -- JSON Schema -----------------------------------------------------------------------------
def _type_consts(schema: dict) -> set[str]:
    consts = set()
    for definition in schema["$defs"].values():
        type_property = definition.get("properties", {}).get("type", {})
        if "const" in type_property:
            consts.add(type_property["const"])
        consts.update(type_property.get("enum", []))
    return consts


def test_schema_command_prints_a_json_schema_with_every_type():
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert _type_consts(schema) == set(EVENT_TYPES)
    assert len(schema["oneOf"]) == len(EVENT_TYPES)
    assert schema == json.loads(json.dumps(json_schema()))


def test_schema_forbids_unknown_fields_and_lists_required_ones():
    schema = json_schema()
    by_type = {}
    for definition in schema["$defs"].values():
        type_property = definition.get("properties", {}).get("type", {})
        if "const" in type_property:
            by_type[type_property["const"]] = definition
    assert set(by_type) == set(EVENT_TYPES)
    for type_, definition in by_type.items():
        assert definition.get("additionalProperties") is False, type_
        required = set(definition.get("required", []))
        assert {*ENVELOPE_REQUIRED, "type", *REQUIRED[type_]} <= required, type_
        assert "recorded_at" not in definition["properties"], type_


def test_a_rejection_message_stays_short_whatever_was_sent():
    # Escaping an echoed value can multiply its length (one astral character + a control
    # character -> '\U0001f600\x00'...): every message is capped all the same.
    raw = {
        "event_id": "e",
        "student_id": "s",
        "type": "\U0001f600\x00" * 40,
        "occurred_on": "2024-01-01",
    }
    with pytest.raises(ContractError) as caught:
        parse_event(raw)
    assert caught.value.messages
    assert all(len(m) <= 400 and m.isprintable() for m in caught.value.messages)


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (None, "null"),
        ([], "an array"),
        (5, "a number"),
        (2.5, "a number"),
        ("x", "a string"),
        (True, "true"),
    ],
)
def test_a_line_that_is_not_an_object_is_named_in_json_words(raw, said):
    """A feed author wrote JSON: Python's NoneType, list or str named nothing they sent."""
    assert rejected(raw) == [f"an event must be a JSON object (got {said})"]


@pytest.mark.parametrize(
    ("value", "said"), [(None, "null"), (True, "true"), (False, "false"), ([1], "an array")]
)
def test_echoed_values_are_json_words(value, said):
    raw = example("arc_applied") | {"by_agent": "yes", "application": value}
    assert any(m.startswith("application:") and f"(got {said})" in m for m in rejected(raw))


@pytest.mark.parametrize("key", ["", " "])
def test_an_empty_or_blank_unknown_key_is_shown_quoted(key):
    """A CSV column without a name said ': unknown field', naming nothing."""
    raw = example("departed") | {key: "x"}
    assert rejected(raw) == [f"{key!r}: unknown field for an event of type 'departed'"]
