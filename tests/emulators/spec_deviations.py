"""Known differences between the published specs and the real services: the one reviewed list.

The emulators validate every request and response against ``../shared/specs`` with openapi-core.
Where a spec is wrong about the real service, or silent about something the bridge uses, the
difference is written here as a patch applied to the spec before validation, each with what it
changes, why, and the page that shows the real behaviour. Nothing else relaxes validation.
``tests/sms/test_emulators.py`` checks that each patch still changes something (a stale entry
fails), and that the unpatched spec really rejects what the patch allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Spec = dict[str, Any]


@dataclass(frozen=True)
class Deviation:
    spec: str  # file name in ../shared/specs
    what: str  # what the patch changes
    why: str  # where the real behaviour is documented
    patch: Callable[[Spec], int]  # changes the spec in place; returns how many places it changed


# --- SMSGate ------------------------------------------------------------------------------------


def _drop_object_type_on_enum_refs(spec: Spec) -> int:
    """Properties written ``{"allOf": [{"$ref": <a string or integer enum>}], "type": "object"}``."""
    schemas = spec["components"]["schemas"]
    changed = 0

    def walk(node: Any) -> None:
        nonlocal changed
        if isinstance(node, dict):
            refs = node.get("allOf")
            if node.get("type") == "object" and isinstance(refs, list) and len(refs) == 1 and "$ref" in refs[0]:
                target = schemas[refs[0]["$ref"].rsplit("/", 1)[-1]]
                if target.get("type") in ("string", "integer"):
                    del node["type"]
                    changed += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return changed


def _webhook_payload_any_of(spec: Spec) -> int:
    prop = spec["components"]["schemas"]["WebHookEvent"]["properties"]["payload"]
    if "oneOf" not in prop:
        return 0
    prop["anyOf"] = prop.pop("oneOf")
    return 1


# --- Twilio -------------------------------------------------------------------------------------

TWILIO_ERROR = {
    "type": "object",
    "required": ["code", "message", "status"],
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "more_info": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}
TWILIO_OPERATIONS = [
    ("/2010-04-01/Accounts/{Sid}.json", "get"),
    ("/2010-04-01/Accounts/{AccountSid}/Messages.json", "post"),
    ("/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json", "get"),
    ("/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json", "get"),
    ("/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers/{Sid}.json", "post"),
    ("/2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{Sid}.json", "get"),
]


def _twilio_error_responses(spec: Spec) -> int:
    changed = 0
    for path, method in TWILIO_OPERATIONS:
        responses = spec["paths"][path][method]["responses"]
        if "default" not in responses:
            responses["default"] = {"description": "Error",
                                    "content": {"application/json": {"schema": TWILIO_ERROR}}}
            changed += 1
    return changed


def _twilio_media_content(spec: Spec) -> int:
    path = "/2010-04-01/Accounts/{AccountSid}/Messages/{MessageSid}/Media/{Sid}"
    if path in spec["paths"]:
        return 0
    sid = {"type": "string", "minLength": 34, "maxLength": 34}
    spec["paths"][path] = {"get": {
        "operationId": "FetchMediaContent",
        "security": [{"accountSid_authToken": []}],
        "parameters": [
            {"name": "AccountSid", "in": "path", "required": True, "schema": {**sid, "pattern": "^AC[0-9a-fA-F]{32}$"}},
            {"name": "MessageSid", "in": "path", "required": True,
             "schema": {**sid, "pattern": "^(SM|MM)[0-9a-fA-F]{32}$"}},
            {"name": "Sid", "in": "path", "required": True, "schema": {**sid, "pattern": "^ME[0-9a-fA-F]{32}$"}},
        ],
        "responses": {
            "200": {"description": "The file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
            "default": {"description": "Error", "content": {"application/json": {"schema": TWILIO_ERROR}}},
        },
    }}
    return 1


DEVIATIONS: list[Deviation] = [
    Deviation(
        "smsgate-openapi.json",
        "Enum-valued properties (message and recipient state, webhook event, priority, ...) are declared "
        "`type: object` beside an allOf of a string or integer enum, which no value can satisfy; the "
        "`type: object` is dropped so the enum applies.",
        "The generator (swaggo) artefact; the API returns plain strings such as \"Pending\" and "
        "\"sms:received\": https://docs.sms-gate.app/integration/api/ and the same spec's own examples.",
        _drop_object_type_on_enum_refs,
    ),
    Deviation(
        "smsgate-openapi.json",
        "WebHookEvent.payload is a oneOf of payload schemas that do not exclude each other (an "
        "sms:received payload also matches SmsSentPayload), so every real payload fails oneOf; it is "
        "checked as anyOf, and the emulator also validates each payload against its event's schema.",
        "Payload per event: https://docs.sms-gate.app/features/webhooks/#event-types",
        _webhook_payload_any_of,
    ),
    Deviation(
        "twilio-api-v2010-openapi.json",
        "The spec describes only success responses; errors are added as a `default` response with "
        "Twilio's error body {code, message, more_info, status} on the operations the bridge uses.",
        "https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions",
        _twilio_error_responses,
    ),
    Deviation(
        "twilio-api-v2010-openapi.json",
        "A Media resource's URL without `.json` returns the file itself (what MediaUrl0..N in an "
        "incoming-message webhook point to); the spec has only the `.json` metadata form.",
        "https://www.twilio.com/docs/messaging/api/media-resource#fetch-a-media-resource "
        "(\"omit the .json extension to get the media file\")",
        _twilio_media_content,
    ),
]

# Not in either spec, so checked against the services' documentation in the emulators instead:
# SMSGate's webhook signature (X-Signature/X-Timestamp, docs.sms-gate.app/features/webhooks/#security)
# and Twilio's webhook parameters and X-Twilio-Signature
# (twilio.com/docs/messaging/guides/webhook-request, twilio.com/docs/usage/webhooks/webhooks-security).


def apply(spec_name: str, spec: Spec) -> list[tuple[Deviation, int]]:
    """Apply every deviation for ``spec_name`` in place; returns each with its change count."""
    return [(d, d.patch(spec)) for d in DEVIATIONS if d.spec == spec_name]
