"""Robinhood sessions: stored once by a person (`brokersync login`), reused by the service.

The session file is robin_stocks's own format (``robinhood.pickle``: token type, access and
refresh token, device token), so ``brokersync login`` can use robin_stocks's interactive login
(password prompt, SMS/e-mail code, app approval) and the service reuses what it stored. The
service reads it with an unpickler that refuses every class (the file holds a plain dict of
strings), and writes it owner-only (0600 in a 0700 folder; on Windows the folder's ACL,
by default the user profile's, applies).

A service never prompts and never blocks: :func:`password_login` posts the same request as
robin_stocks's login with a timeout and, when Robinhood answers with a verification workflow
or asks for an MFA code, raises :class:`LoginRequired` naming the command to run.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

import requests

from producer.broker import LoginRequired

log = logging.getLogger(__name__)

SESSION_FILE = "robinhood.pickle"
CLIENT_ID = "c82SH0WZOsabOXGP2sxqcj34FxkvfnWRZBKlBjFS"  # robin_stocks's (the web app's) client id
LOGIN_HINT = "run `brokersync login` in a terminal once (the service reuses the stored session)"


class _NoClasses(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: ARG002
        raise pickle.UnpicklingError(f"session file refers to {module}.{name}; refusing to load it")


def session_file(folder: Path) -> Path:
    return folder / SESSION_FILE


def load_session(folder: Path) -> dict[str, str] | None:
    path = session_file(folder)
    if not path.is_file():
        return None
    try:
        data = _NoClasses(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        log.warning("ignoring unreadable session file %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("token_type", "access_token")):
        log.warning("ignoring session file %s: not a Robinhood session", path)
        return None
    return {k: v for k, v in data.items() if isinstance(v, str)}


def secure(folder: Path) -> None:
    """Owner-only permissions on the session folder and file (POSIX modes)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.name != "nt":
        os.chmod(folder, 0o700)
        path = session_file(folder)
        if path.exists():
            os.chmod(path, 0o600)


def save_session(folder: Path, data: dict[str, str]) -> Path:
    secure(folder)
    path = session_file(folder)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump({k: data[k] for k in ("token_type", "access_token", "refresh_token", "device_token")
                     if k in data}, f)
    os.replace(tmp, path)
    secure(folder)
    return path


def device_token(folder: Path) -> str:
    stored = load_session(folder)
    if stored and stored.get("device_token"):
        return stored["device_token"]
    from robin_stocks.robinhood.authentication import generate_device_token

    return str(generate_device_token())


def totp(secret: str | None) -> str | None:
    if not secret:
        return None
    import pyotp

    return str(pyotp.TOTP(secret).now())


def password_login(session: requests.Session, folder: Path, username: str, password: str,
                   mfa_secret: str | None, timeout: float) -> dict[str, str]:
    """One non-interactive login; stores and returns the session or raises LoginRequired."""
    from robin_stocks.robinhood.urls import login_url

    payload: dict[str, Any] = {
        "client_id": CLIENT_ID, "expires_in": 86400 * 7, "grant_type": "password",
        "password": password, "scope": "internal", "username": username,
        "device_token": device_token(folder), "try_passkeys": False,
        "token_request_path": "/login", "create_read_only_secondary_token": True,
    }
    code = totp(mfa_secret)
    if code:
        payload["mfa_code"] = code
    try:
        resp = session.post(login_url(), data=payload, timeout=timeout)
    except requests.RequestException as exc:
        raise LoginRequired(f"login request failed ({type(exc).__name__}); will retry") from None
    try:
        data = resp.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if "verification_workflow" in data:
        raise LoginRequired(f"Robinhood wants this device approved (verification workflow); {LOGIN_HINT}",
                            resp.status_code)
    if data.get("mfa_required"):
        raise LoginRequired("Robinhood asks for an MFA code; set BROKERSYNC_ROBINHOOD_MFA_SECRET "
                            f"(authenticator apps) or {LOGIN_HINT}", resp.status_code)
    if resp.status_code != 200 or "access_token" not in data:
        detail = data.get("detail") or data.get("error_description") or data.get("error") or ""
        raise LoginRequired(f"Robinhood refused the login (HTTP {resp.status_code}"
                            f"{': ' + str(detail)[:120] if detail else ''}); check "
                            f"BROKERSYNC_ROBINHOOD_USERNAME/PASSWORD or {LOGIN_HINT}", resp.status_code)
    stored = {"token_type": str(data.get("token_type", "Bearer")), "access_token": str(data["access_token"]),
              "refresh_token": str(data.get("refresh_token", "")), "device_token": payload["device_token"]}
    save_session(folder, stored)
    return stored


def interactive_login(folder: Path, username: str | None, password: str | None,
                      mfa_secret: str | None) -> bool:
    """robin_stocks's own login, for a person at a terminal (prompts, approvals, codes)."""
    import robin_stocks.robinhood as rh

    secure(folder)
    result = rh.login(username=username, password=password, expiresIn=86400 * 7,
                      store_session=True, mfa_code=totp(mfa_secret), pickle_path=str(folder))
    secure(folder)
    return bool(result) and session_file(folder).is_file()


def new_device_token() -> str:
    return secrets.token_hex(16)
