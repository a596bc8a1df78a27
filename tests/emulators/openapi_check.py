"""Holding an emulator to a published OpenAPI spec with openapi-core.

:class:`SpecChecker` validates each request an emulator receives and each response it returns
against a spec from ``../shared/specs`` (relative to the repository root; in CI the specs sit
beside the checkout), after applying the reviewed patches in :mod:`tests.emulators.spec_deviations`.
Violations are recorded as readable strings; tests assert there are none.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web
from jsonschema_path import SchemaPath
from multidict import CIMultiDict, MultiDict
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.schemas import oas30_read_schema_validators_factory

from . import spec_deviations

log = logging.getLogger("tests.emulators.openapi")

REPO_ROOT = Path(__file__).resolve().parents[2]

# String formats the specs use beyond OpenAPI's own, with the meaning their publishers give them.
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")


def _rfc2822(value: str) -> bool:
    try:
        return parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


FORMATS: dict[str, Callable[[str], bool]] = {
    # Twilio: E.164, or a channel address such as whatsapp:+15552229999 (see the To parameter).
    "phone-number": lambda v: bool(_E164.match(v) or re.match(r"^[a-z]+:\S+$", v)),
    "date-time-rfc-2822": _rfc2822,  # "Thu, 24 Aug 2023 05:01:45 +0000"
    "currency": lambda v: bool(re.fullmatch(r"[A-Za-z]{3}", v)),  # ISO 4217
}


class SpecMissing(RuntimeError):
    pass


def specs_dir() -> Path:
    """Where the published specs are: ``<repo root>/../shared/specs``. Raises SpecMissing."""
    path = REPO_ROOT.parent / "shared" / "specs"
    if not path.is_dir():
        raise SpecMissing(f"The published OpenAPI specs are not at {path}: the emulators are held to them. "
                          "Put the shared/specs directory beside the repository checkout.")
    return path


@lru_cache(maxsize=None)
def _raw_spec(name: str) -> str:
    path = specs_dir() / name
    if not path.exists():
        raise SpecMissing(f"{path} is missing: the emulators are held to this published spec.")
    return path.read_text()


def load_spec(name: str, *, patched: bool = True) -> dict[str, Any]:
    """A fresh copy of the spec, with the allow-listed deviations applied (unless ``patched=False``)."""
    spec = json.loads(_raw_spec(name))
    for item in spec.get("paths", {}).values():
        item.pop("servers", None)  # every path is served by the emulator
    if patched:
        spec_deviations.apply(name, spec)
    return spec


class _Request:
    """The request protocol openapi-core reads (host with its port, raw body)."""

    def __init__(self, host_url: str, method: str, path: str, query: MultiDict[str], headers: CIMultiDict[str],
                 body: bytes, content_type: str) -> None:
        self.host_url = host_url
        self.method = method.lower()
        self.path = path
        self.body = body
        self.content_type = content_type
        self.parameters = RequestParameters(query=query, header=headers, cookie={})


class _Response:
    def __init__(self, status: int, body: bytes, headers: CIMultiDict[str], content_type: str) -> None:
        self.status_code = status
        self.data = body
        self.headers = headers
        self.content_type = content_type


def _describe(errors: list[Exception]) -> str:
    parts = []
    for e in errors:
        text = f"{type(e).__name__}: {e}"
        cause = e.__cause__
        details = getattr(cause, "schema_errors", None) or getattr(e, "schema_errors", None)
        if details:
            text += " [" + "; ".join(f"{'/'.join(map(str, d.absolute_path))}: {d.message}" for d in details) + "]"
        elif cause is not None:
            text += f" ({type(cause).__name__}: {cause})"
        parts.append(text)
    return " | ".join(parts)


class SpecChecker:
    """Validates traffic of one emulator against one spec; collects violations."""

    def __init__(self, spec_name: str, server_url: str) -> None:
        self.spec_name = spec_name
        self.spec = load_spec(spec_name)
        self.spec["servers"] = [{"url": server_url.rstrip("/")}]
        # The published spec is not re-validated (slow, and not ours to fix); traffic is.
        self.openapi = OpenAPI.from_dict(self.spec, config=Config(
            spec_validator_cls=None, extra_format_validators=FORMATS, extra_format_unmarshallers={k: str for k in FORMATS}))
        self.violations: list[str] = []
        self.checked = 0
        self._schema_path: SchemaPath | None = None

    def _request(self, request: web.Request, body: bytes) -> _Request:
        host = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        return _Request(host, request.method, request.path, MultiDict(request.query),
                        CIMultiDict(request.headers), body, request.content_type if body else "")

    def check_request(self, request: web.Request, body: bytes) -> list[str]:
        """Validate one received request. Returns (and records) what is wrong."""
        self.checked += 1
        result = self.openapi.unmarshal_request(self._request(request, body))
        found = [f"request {request.method} {request.path}: {_describe(result.errors)}"] if result.errors else []
        self.violations.extend(found)
        return found

    def check_response(self, request: web.Request, body: bytes, response: web.Response) -> list[str]:
        """Validate the response the emulator returns to ``request``. Returns what is wrong."""
        self.checked += 1
        data = response.body if isinstance(response.body, bytes) else b""
        resp = _Response(response.status, data, CIMultiDict(response.headers), response.content_type or "")
        result = self.openapi.unmarshal_response(self._request(request, body), resp)
        errors = list(result.errors)
        if response.status == 204 and not data:
            # `content: {}` means "no body"; openapi-core still asks for data.
            errors = [e for e in errors if type(e).__name__ != "MissingData"]
        found = ([f"response {response.status} to {request.method} {request.path}: {_describe(errors)}"]
                 if errors else [])
        self.violations.extend(found)
        return found

    def _schema_validator(self, component: str) -> Any:
        if self._schema_path is None:
            self._schema_path = SchemaPath.from_dict(copy.deepcopy(self.spec))
        schema = self._schema_path / "components" / "schemas" / component
        return oas30_read_schema_validators_factory.create(self._schema_path, schema,
                                                           extra_format_validators=FORMATS)

    def check_schema(self, component: str, instance: Any, what: str) -> list[str]:
        """Validate a JSON value (a webhook the emulator sends) against ``#/components/schemas/<component>``."""
        self.checked += 1
        validator = self._schema_validator(component)
        found = [f"{what}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                 for e in validator.validator.iter_errors(instance)]
        self.violations.extend(found)
        return found


def validating_middleware(checker: SpecChecker) -> Any:
    """An aiohttp middleware that validates each request and the response given to it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        checker.check_request(request, body)
        try:
            response = await handler(request)
        except web.HTTPException as e:
            response = e
        if isinstance(response, web.Response):
            checker.check_response(request, body, response)
        return response

    return middleware
