"""Two of schemathesis's checks, refined for `POST /v1/events` where OpenAPI cannot say it all.

Loaded by the `schemathesis run` of `tests/test_api_openapi.py` (config `hooks`), which turns
the built-in `positive_data_acceptance` and `negative_data_rejection` off for that one
operation and these on. Each calls the built-in check and excuses exactly one documented
behaviour, nothing else:

- A schema-valid batch may still be refused (422) for the contract's cross-field rules that
  JSON Schema cannot state (a date on or after `occurred_on`, a retraction of itself), or
  be a conflict with what is stored. Every rejection must then cite one of those.
- With `?partial=true` an invalid event is reported (200, `rejected` non-empty) instead of
  refusing the request; in that mode a schema-valid event may only be rejected as above.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

# The contract's rules on two fields at once (timeline/contract.py's model validators).
CROSS_FIELD = frozenset(
    {
        "stay_until: must be on or after occurred_on",
        "valid_until: must be on or after occurred_on",
        "leave_by: must be on or after occurred_on",
        "retracts: an event cannot retract itself",
    }
)
# Conflicts with what is stored (timeline/ingest.py; the API answers them 409 when alone).
CONFLICTS = (
    "conflict: ",
    "retracts: no event ",
    "retracts: event ",
    "retracts: a retraction cannot be retracted",
)


def _is_events(case: Any) -> bool:
    return case.operation.method.upper() == "POST" and case.operation.path == "/v1/events"


def _partial(case: Any) -> bool:
    value = (case.query or {}).get("partial")
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _rejections(response: Any) -> list[str] | None:
    """The rejection messages of an ingest report, None when the body is not one."""
    try:
        body = response.json()
        return [str(r["error"]) for r in body["rejected"]]
    except (ValueError, KeyError, TypeError):
        return None


def _unstatable(error: str) -> bool:
    return error in CROSS_FIELD or error.startswith(CONFLICTS)


@schemathesis.check
def events_positive_data_acceptance(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance; a refusal (or a partial rejection) may cite only the rules
    JSON Schema cannot state, or a conflict with what is stored."""
    if not _is_events(case):
        return None
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and _partial(case) and response.status_code == 200:
        odd = [e for e in _rejections(response) or [] if not _unstatable(e)]
        if odd:
            raise AssertionError(f"a schema-valid event was rejected: {odd[0]}")
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        rejections = _rejections(response)
        if response.status_code == 422 and rejections and all(map(_unstatable, rejections)):
            return None
        raise


@schemathesis.check
def events_negative_data_rejection(ctx: Any, response: Any, case: Any) -> bool | None:
    """negative_data_rejection; with ?partial=true an invalid event may be reported (200)."""
    if not _is_events(case):
        return None
    try:
        return negative_data_rejection(ctx, response, case)
    except AcceptedNegativeData:
        if _partial(case) and response.status_code == 200 and _rejections(response):
            return None
        raise
