"""Authentication: NativeAuthenticator with an admin account created on first start."""

from __future__ import annotations

import os
import secrets
import sys

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as NativeLoginHandler
from traitlets import Unicode


class _NoStatsd:
    """Stands in for the statsd client JupyterHub 6 removed."""

    def timer(self, *args, **kwargs) -> _NoStatsd:
        return self

    def start(self) -> _NoStatsd:
        return self

    def stop(self, *args, **kwargs) -> None:
        pass


class LoginHandler(NativeLoginHandler):
    """NativeAuthenticator 1.3's login page, made to work with JupyterHub 6.

    1.3 times logins with ``self.statsd`` (gone in JupyterHub 6: every login
    answered 500) and its ``_render`` does not accept the arguments JupyterHub 6
    passes when it shows a login error.
    """

    statsd = _NoStatsd()

    def _render(self, login_error=None, username=None, **ignored):
        return super()._render(login_error=login_error, username=username)


class DesilabAuthenticator(NativeAuthenticator):
    """NativeAuthenticator whose first start creates the admin account.

    Sign-ups wait for an admin's approval (``/hub/authorize``); users can enable
    TOTP two-factor authentication. The admin's password comes from
    DESILAB_ADMIN_PASSWORD, else it is generated and printed once.
    """

    admin_name = Unicode("admin", help="Name of the admin account created on the first start.").tag(
        config=True
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.admin_users = set(self.admin_users) | {self.admin_name}
        self.ensure_admin()

    def get_handlers(self, app):
        return [
            (path, LoginHandler if path == r"/login" else handler)
            for path, handler in super().get_handlers(app)
        ]

    def ensure_admin(self) -> None:
        """Create the admin account if it does not exist yet."""
        if self.user_exists(self.admin_name):
            return
        given = os.environ.get("DESILAB_ADMIN_PASSWORD", "")
        password = given or secrets.token_urlsafe(12)
        info = self.create_user(self.admin_name, password)
        if info is None:
            raise ValueError(
                "could not create the admin account: DESILAB_ADMIN_PASSWORD must have at "
                f"least {self.minimum_password_length} characters and not be a common password"
            )
        if not given:
            # printed once: it is not stored anywhere in clear text
            print(
                f"\n  desilab: created the admin account {self.admin_name!r} with password: "
                f"{password}\n  (shown only now; change it at /hub/change-password)\n",
                file=sys.stderr,
                flush=True,
            )
        self.log.info("Created the admin account %r", self.admin_name)
