"""The OpenAPI 3.1 description of the case API, written as data (served at /api/v1/openapi.json)."""

from __future__ import annotations

import copy
from typing import Any

from tmsi import __version__
from tmsi.models import CaseStatus, CheckResult, Resolution

_STATUS = [s.value for s in CaseStatus]
_RESULT = [r.value for r in CheckResult]
_ACTIONS = [
    "assign",
    "note",
    "verify",
    "delist",
    "reject",
    "ask",
    "reply",
    "merge",
    "split",
    "close",
    "spam",
    "reopen",
    "retry",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_REFERENCE = {
    "name": "reference",
    "in": "path",
    "required": True,
    "description": "case reference, TMSI-YYYY-NNNNNN",
    "schema": {"type": "string", "pattern": "^TMSI-[0-9]{4}-[0-9]{6,}$"},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
    "CaseSummary": {
        "type": "object",
        "required": [
            "reference",
            "status",
            "subject",
            "requester_email",
            "authority_result",
            "verification_result",
            "created_at",
            "version",
        ],
        "properties": {
            "reference": {"type": "string"},
            "status": {"type": "string", "enum": _STATUS},
            "resolution": {"type": ["string", "null"], "enum": [*(r.value for r in Resolution), None]},
            "subject": {"type": "string"},
            "requester_email": {"type": "string"},
            "requester_name": {"type": "string"},
            "requester_domain": {"type": "string"},
            "assignee": {"type": ["string", "null"]},
            "authority_result": {"type": "string", "enum": _RESULT},
            "verification_result": {"type": "string", "enum": _RESULT},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "waiting_since": {"type": ["string", "null"], "format": "date-time"},
            "version": {"type": "integer", "description": "optimistic lock; send it back with an action"},
            "networks": {
                "type": "array",
                "items": {"type": "string"},
                "description": "first target networks",
            },
            "target_count": {"type": "integer"},
        },
    },
    "CaseList": {
        "type": "object",
        "required": ["total", "page", "per_page", "cases", "counts"],
        "properties": {
            "total": {"type": "integer"},
            "page": {"type": "integer"},
            "per_page": {"type": "integer"},
            "pages": {"type": "integer"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "cases": {"type": "array", "items": _ref("CaseSummary")},
        },
    },
    "Target": {
        "type": "object",
        "required": ["id", "network", "coverage", "status"],
        "properties": {
            "id": {"type": "integer"},
            "network": {"type": "string"},
            "source_text": {"type": "string"},
            "coverage": {"type": "string", "enum": ["listed", "partly_listed", "not_listed"]},
            "status": {"type": "string"},
            "summary": {"type": "object"},
            "checks": {"type": "array", "items": {"type": "object"}},
        },
    },
    "CaseDetail": {
        "allOf": [
            _ref("CaseSummary"),
            {
                "type": "object",
                "required": ["targets", "messages", "timeline", "outbox"],
                "properties": {
                    "authority_evidence": {"type": "object"},
                    "merged_into": {"type": ["string", "null"]},
                    "targets": {"type": "array", "items": _ref("Target")},
                    "messages": {"type": "array", "items": {"type": "object"}},
                    "outbox": {"type": "array", "items": {"type": "object"}},
                    "timeline": {
                        "type": "array",
                        "items": {"type": "object", "required": ["at", "actor", "action"]},
                    },
                },
            },
        ]
    },
    "ActionRequest": {
        "type": "object",
        "description": "Fields used by each action: assign(assignee: user id, e-mail, 'me' or 'none'); "
        "note(body); verify(targets?); delist(targets?, only?: addresses/CIDRs inside them, "
        "reason?); reject(reason, send?); ask(question); reply(template, subject?, body?, to?); "
        "merge(cases: references); split(targets); close(resolution?, reason?); spam(); "
        "reopen(reason?); retry(outbox).",
        "properties": {
            "version": {"type": "integer", "description": "the case version read; a mismatch gives 409"},
            "assignee": {"type": ["string", "integer"]},
            "body": {"type": "string"},
            "targets": {"type": "array", "items": {"type": "integer"}},
            "only": {"type": "string"},
            "reason": {"type": "string"},
            "send": {"type": "boolean"},
            "question": {"type": "string"},
            "template": {"type": "string"},
            "subject": {"type": "string"},
            "to": {"type": "string"},
            "cases": {"type": "array", "items": {"type": "string"}},
            "resolution": {"type": "string", "enum": [r.value for r in Resolution]},
            "outbox": {"type": "integer"},
        },
    },
    "ActionResult": {
        "type": "object",
        "required": ["ok", "message", "case"],
        "properties": {
            "ok": {"type": "boolean"},
            "message": {"type": "string"},
            "verification": {"type": ["string", "null"]},
            "data": {"type": "object"},
            "case": _ref("CaseSummary"),
        },
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "tmsi case API",
        "version": __version__,
        "description": "Delisting-request cases of the Dynamic User List: the queue, a case with its "
        "evidence, and the analyst's actions. Authenticate with a per-user API token "
        "(`tmsi users token EMAIL`). A query filter given with an empty value is the same as one left "
        "out, as the /cases page's form sends them.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearerToken": []}],
    "paths": {
        "/api/v1/cases": {
            "get": {
                "operationId": "listCases",
                "summary": "The queue, with the same filters as the /cases page",
                "parameters": [
                    _query(
                        "status",
                        "status (repeatable) or 'all'; default: the open states",
                        {"type": "string", "enum": [*_STATUS, "all", ""]},
                    ),
                    _query("assignee", "'me', 'none' or a user id", {"type": "string"}),
                    _query("domain", "requester domain", {"type": "string"}),
                    _query("authority", "authority result", {"type": "string", "enum": [*_RESULT, ""]}),
                    _query("verification", "verification result", {"type": "string", "enum": [*_RESULT, ""]}),
                    _query(
                        "age",
                        "waiting longer than",
                        {"type": "string", "enum": ["1h", "1d", "3d", "7d", "30d", ""]},
                    ),
                    _query(
                        "q",
                        "full-text search: subject, requester, reference, message text",
                        {"type": "string"},
                    ),
                    _query("net", "address or CIDR: cases whose targets overlap it", {"type": "string"}),
                    _query(
                        "sort",
                        "order",
                        {
                            "type": "string",
                            "enum": ["waiting", "-waiting", "created", "-created", "updated", ""],
                        },
                    ),
                    _query("page", "page number, held to 1 to 1,000,000", {"type": "integer"}),
                    _query("per_page", "page size, held to 1 to 200 (default 50)", {"type": "integer"}),
                ],
                "responses": {
                    "200": {
                        "description": "a page of cases",
                        "content": {"application/json": {"schema": _ref("CaseList")}},
                    },
                    "400": _error_response("invalid filter"),
                    "401": _error_response("no or bad token"),
                },
            }
        },
        "/api/v1/cases/{reference}": {
            "get": {
                "operationId": "getCase",
                "summary": "One case: targets with verdicts, thread, outbox, timeline",
                "parameters": [_REFERENCE],
                "responses": {
                    "200": {
                        "description": "the case",
                        "content": {"application/json": {"schema": _ref("CaseDetail")}},
                    },
                    "401": _error_response("no or bad token"),
                    "404": _error_response("unknown case"),
                },
            }
        },
        "/api/v1/cases/{reference}/{action}": {
            "post": {
                "operationId": "caseAction",
                "summary": "Act on a case (needs an analyst, lead or admin token)",
                "parameters": [
                    _REFERENCE,
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": _ACTIONS},
                    },
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "a retried request with the same key is done once (409 already_done)",
                        "schema": {"type": "string", "maxLength": 64},
                    },
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("ActionRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "done",
                        "content": {"application/json": {"schema": _ref("ActionResult")}},
                    },
                    "400": _error_response("not done: invalid input, header injection, template error"),
                    "401": _error_response("no or bad token"),
                    "403": _error_response("the role may not act"),
                    "404": _error_response("unknown case or action"),
                    "409": _error_response("stale version or already done"),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearerToken": {"type": "http", "scheme": "bearer", "description": "a per-user API token, tmsi_…"}
        },
        "schemas": _SCHEMAS,
    },
}


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_DOCUMENT)
