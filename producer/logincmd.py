"""`brokersync login`: store a Robinhood session, interactively when a person is there.

At a terminal: robin_stocks's own login (password prompt when none is configured, SMS or
e-mail code, app approval), the session stored owner-only in the session folder. Without a
terminal (a service manager, a pipe, CI): one non-interactive attempt that fails at once,
with a message, if Robinhood wants a person; it never waits for input.
"""

from __future__ import annotations

import argparse
import logging
from typing import IO

from brokersync.errors import BrokersyncError
from brokersync.settings import Settings
from producer.broker import LoginRequired

log = logging.getLogger("producer")


def run_login(args: argparse.Namespace, settings: Settings, stdin: IO[str]) -> int:
    folder = settings.session_path
    username = settings.robinhood_username
    password = settings.robinhood_password.get_secret_value() if settings.robinhood_password else None
    mfa = settings.robinhood_mfa_secret.get_secret_value() if settings.robinhood_mfa_secret else None
    interactive = bool(getattr(stdin, "isatty", lambda: False)())
    if interactive:
        from producer.login import interactive_login

        if not username:
            username = input("Robinhood username: ").strip()
        if interactive_login(folder, username, password, mfa):
            print(f"logged in; session stored in {folder} (readable by you only)")
            return 0
        raise BrokersyncError("login failed; check the username, password and code, and try again")
    if not (username and password):
        raise BrokersyncError(
            "brokersync login needs a terminal to ask for the password, or "
            "BROKERSYNC_ROBINHOOD_USERNAME and BROKERSYNC_ROBINHOOD_PASSWORD set")
    from producer.login import password_login
    from producer.robinhood import robin_session

    try:
        password_login(robin_session(), folder, username, password, mfa, settings.producer_timeout)
    except LoginRequired as exc:
        raise BrokersyncError(f"login not completed: {exc}") from None
    print(f"logged in; session stored in {folder} (readable by you only)")
    return 0
