"""Strict JSON for feed lines and request bodies: refusals are ValueErrors, never crashes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeline.rawjson import loads_strict, nesting_depth


def test_duplicate_keys_are_refused_not_silently_merged() -> None:
    with pytest.raises(ValueError, match="duplicate key 'type'"):
        loads_strict('{"type": "entered", "type": "departed"}')


def test_nesting_a_thousand_deep_is_a_clean_refusal() -> None:
    with pytest.raises(ValueError, match="nested more than"):
        loads_strict("[" * 1000 + "]" * 1000)
    with pytest.raises(ValueError, match="nested more than"):
        loads_strict('{"a":' * 5000 + "1" + "}" * 5000)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"note": "[" * 100 + '\\"{' * 50})
    assert loads_strict(text) == json.loads(text)


@pytest.mark.parametrize("text", ["NaN", '{"a": Infinity}', "[-Infinity]", "[1e999]"])
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        loads_strict(text)


def test_huge_integers_are_refused() -> None:
    with pytest.raises(ValueError, match="more than 18 digits"):
        loads_strict('{"amount_ntd": ' + "9" * 5000 + "}")


def test_invalid_json_names_the_column_not_the_content() -> None:
    with pytest.raises(ValueError) as caught:
        loads_strict('{"address": "12 Secret Road", ')
    assert "column" in str(caught.value)
    assert "Secret" not in str(caught.value)


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(ValueError, match="not UTF-8"):
        loads_strict(b'{"a": "\xff"}')


def test_nesting_depth_counts_arrays_and_objects() -> None:
    assert nesting_depth('{"a": [1, {"b": []}]}') == 4
    assert nesting_depth('"[[["') == 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**17), 10**17) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(_json)
def test_shallow_valid_json_parses_as_the_standard_library_does(value: object) -> None:
    text = json.dumps(value)
    if nesting_depth(text) <= 20:
        assert loads_strict(text) == json.loads(text)


@given(st.text(max_size=200))
def test_any_text_is_parsed_or_refused_with_a_value_error(text: str) -> None:
    try:
        parsed = loads_strict(text)
    except ValueError:
        return
    assert parsed == json.loads(text)


def test_a_byte_order_mark_is_named_without_python_advice() -> None:
    """It said "(decode using utf-8-sig)": advice for Python, to a feed or an API client."""
    with pytest.raises(ValueError) as refused:
        loads_strict('\ufeff{"type": "entered"}')
    assert str(refused.value) == "invalid JSON: starts with a byte order mark (U+FEFF)"


def test_an_unterminated_string_is_said_once_where_it_starts() -> None:
    # A producer that died mid-line: json's own text ends in "starting at", and the
    # column was appended after it ("starting at at column 7").
    with pytest.raises(ValueError) as caught:
        loads_strict('{"a": "abc')
    assert str(caught.value) == "invalid JSON: Unterminated string starting at column 7"
