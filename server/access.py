"""Who may do what: a secret for writes and questions, a Host check against DNS rebinding.

Any web page the proofreader visits runs in the same browser, and can send requests to
127.0.0.1. What keeps it out:

- The API answers only requests that carry the token (``Authorization: Bearer <token>``); a
  page from another origin cannot add that header without a CORS preflight, and the API
  answers no preflight and sends no CORS headers, so it can neither write nor read.
- Viewer URLs hold a per-user viewer token derived from the secret (neuroglancer's key actions
  need it), and they are handed out only to requests with the token.
- The volume data (``/data``, ``/segments``) stays readable from any origin, without
  credentials: neuroglancer's client runs on another port and reads it from there.
- A request whose ``Host`` is not a name of this server is refused, on promptcut's server and
  on neuroglancer's: a rebinding domain that points at 127.0.0.1 still sends its own name.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
from typing import Iterable, Optional
from urllib.parse import urlsplit

import tornado.web

from segmentation.errors import InputError

TOKEN_ENV = "PROMPTCUT_TOKEN"
MAX_BODY = 1 << 20  # bytes: edit requests hold a few points


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Access:
    def __init__(self, token: str, hosts: Iterable[str]):
        self.token = token
        self.hosts = {h.lower().strip("[]") for h in hosts if h}

    @classmethod
    def for_server(cls, host: str, configured: Optional[str], public_url: Optional[str]
                   ) -> "Access":
        """The token from the config or PROMPTCUT_TOKEN, else a random one; refuses to serve
        a non-loopback address without one that the user chose."""
        token = configured or os.environ.get(TOKEN_ENV) or None
        if token is None and not is_loopback(host):
            raise InputError(f"server.host is {host}, reachable from other machines: set "
                             f"server.token (or {TOKEN_ENV}) to a secret first")
        if token is not None and len(token) < 16:
            raise InputError("server.token must be at least 16 characters long")
        names = {"localhost", "127.0.0.1", "::1", host}
        if not is_loopback(host):
            names |= {socket.gethostname(), socket.getfqdn()}
            if host in ("0.0.0.0", "::"):
                names |= _addresses()
        if public_url:
            names.add(urlsplit(public_url).hostname or "")
        return cls(token or secrets.token_urlsafe(24), names)

    def viewer_token(self, user: str) -> str:
        """The neuroglancer viewer token of a user: unguessable without the secret, the same
        across restarts with the same secret (so a bookmarked viewer URL keeps working)."""
        digest = hmac.new(self.token.encode(), f"viewer:{user}".encode(), hashlib.sha256)
        return digest.hexdigest()[:40]

    def host_allowed(self, header: str) -> bool:
        try:
            host = urlsplit(f"//{header}").hostname or ""
        except ValueError:  # not a host name at all ("[::1", say)
            return False
        return host.lower() in self.hosts

    def token_given(self, request) -> bool:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                  self.token.encode())


def _addresses() -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return set()


def answer_only_own_names(app: tornado.web.Application, access: Access) -> None:
    """Make ``app`` (ours, or neuroglancer's own) answer only to this server's names, on
    every route: requests naming another Host get 403. Guarding an app again replaces the
    rules instead of stacking checks."""
    original = getattr(app, "_promptcut_find_handler", None) or app.find_handler
    app._promptcut_find_handler = original

    def find_handler(request, **kwargs):
        if not access.host_allowed(request.host or ""):
            return app.get_handler_delegate(request, _WrongHost)
        return original(request, **kwargs)

    app.find_handler = find_handler


class _WrongHost(tornado.web.RequestHandler):
    def prepare(self) -> None:
        raise tornado.web.HTTPError(403)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.finish("this server does not answer to that Host name\n")


def refusal(handler: tornado.web.RequestHandler, kwargs: dict) -> str:
    """The one-line reason a handler's request failed (its HTTPError's message, else the
    status's standard reason), for its write_error."""
    exc = kwargs.get("exc_info", (None, None))[1]
    message = exc.log_message if isinstance(exc, tornado.web.HTTPError) and exc.log_message \
        else handler._reason
    return " ".join(str(message).split())


def require_token(handler: tornado.web.RequestHandler, access: Access) -> None:
    """Raise 401 unless the request carries the token."""
    if not access.token_given(handler.request):
        raise tornado.web.HTTPError(401, "a token is needed: send 'Authorization: Bearer "
                                         "<token>' (printed at start-up)")
