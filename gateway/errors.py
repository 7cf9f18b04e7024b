"""Errors in OpenAI's schema: {"error": {"message", "type", "param", "code"}} with its HTTP status.

Triton's answers map by gRPC status: INVALID_ARGUMENT (the BLS's RequestError: empty text,
unknown task, bad MAX_TIER / POLICY, text too long) -> 400 with the BLS's message unchanged;
UNAVAILABLE (no tier could answer, overloaded, server down), DEADLINE_EXCEEDED and a missing
entry model -> 503; anything else -> 500.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

STATUS_BY_GRPC_CODE = {
    "StatusCode.INVALID_ARGUMENT": (400, "invalid_request_error"),
    "StatusCode.UNAVAILABLE": (503, "service_unavailable"),
    "StatusCode.DEADLINE_EXCEEDED": (503, "service_unavailable"),
    "StatusCode.NOT_FOUND": (503, "service_unavailable"),  # the entry model is not loaded
    "StatusCode.RESOURCE_EXHAUSTED": (503, "service_unavailable"),
}


class GatewayError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param=param)


def from_triton(status: str | None, message: str) -> GatewayError:
    """A tritonclient InferenceServerException's status() and message() as a GatewayError."""
    http_status, type_ = STATUS_BY_GRPC_CODE.get(str(status), (500, "api_error"))
    return GatewayError(http_status, message, type_, code=str(status).removeprefix("StatusCode.").lower() if status else None)
