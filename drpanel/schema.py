"""The OpenAPI schema's shared rules: every operation documents the refusals it can answer.

``PanelAutoSchema`` is drf-spectacular's schema class for every API view (settings:
``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]``). On top of what a view declares, it adds the
error answers the view's shape implies, each with the one error body the API uses
(``{"detail": "...", "errors": {...}}``, see ``drpanel.api.exception_handler``):

- 401 when the view needs a signed-in caller (no token, or a revoked one);
- 403 when it needs a capability, or the method changes something (CSRF for sessions);
- 404 when the path names an object;
- 400 when the operation takes query parameters or a body; 415 when it takes a body.

A view that answers more (409 …) says so with ``extend_schema(responses=...)``, using
``error_response(...)``. So an endpoint added later is complete by default, and the
schemathesis run (``tests/drpanel/test_api_fuzz.py``) checks every answer against it.
"""

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import permissions, serializers

ERROR_DESCRIPTIONS = {
    400: "Refused: a parameter or the body is malformed or not allowed; `detail` says which and why.",
    401: "No valid credentials: send `Authorization: Bearer <token>` with an active token.",
    403: "Refused: this needs a capability or a right on the object that the caller does not hold "
         "(the refusal is audited).",
    404: "No such object, or not one the caller may see.",
    409: "Refused: the object is not in a state that allows this; `detail` says why.",
    415: "The body must be JSON (`Content-Type: application/json`).",
}


class ErrorSerializer(serializers.Serializer):
    """Every error answer of the API: a sentence for people, and per-field messages when a value was refused."""

    detail = serializers.CharField(help_text="What was refused and why.")
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False,
                                   help_text="For refused values: the messages per parameter or body field.")

    class Meta:
        ref_name = "Error"


def error_response(code: int, description: str | None = None) -> OpenApiResponse:
    """An error answer for ``extend_schema(responses={...})`` with the shared error body."""
    return OpenApiResponse(ErrorSerializer, description=description or ERROR_DESCRIPTIONS[code])


_OPEN = (permissions.AllowAny,)
_SIGNED_IN = (permissions.AllowAny, permissions.IsAuthenticated)


class PanelAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema plus the error answers every operation can give (module docstring)."""

    def implied_errors(self) -> list[int]:
        perms = [type(p) for p in self.view.get_permissions()]
        needs_sign_in = any(not issubclass(p, _OPEN) for p in perms)
        has_body = self.method in ("POST", "PUT", "PATCH")
        codes = []
        if needs_sign_in:
            codes.append(401)
            if has_body or any(not issubclass(p, _SIGNED_IN) for p in perms):
                codes.append(403)
        if "{" in self.path:
            codes.append(404)
        if has_body or any(p.get("in") == "query" for p in self._get_parameters()):
            codes.append(400)
        if has_body:
            codes.append(415)
        return codes

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code in self.implied_errors():
            if str(code) not in responses:
                responses[str(code)] = self._get_response_for_code(error_response(code), str(code),
                                                                   direction=direction)
        return responses
