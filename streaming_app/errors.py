"""JSON error responses with a message a person can act on."""

from __future__ import annotations

from http import HTTPStatus

from flask import jsonify


def error_response(status: int, message: str, **extra):
    body = {"error": _reason(status), "message": message, "status": status, **extra}
    resp = jsonify(body)
    resp.status_code = status
    return resp


def _reason(status: int) -> str:

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
