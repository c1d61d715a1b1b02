"""The request being served, for code (the audit writer) that is not handed it explicitly."""

from contextvars import ContextVar

_current_request: ContextVar = ContextVar("drpanel_current_request", default=None)


def current_request():
    return _current_request.get()


def set_current_request(request):
    return _current_request.set(request)


def reset_current_request(token) -> None:
    _current_request.reset(token)
