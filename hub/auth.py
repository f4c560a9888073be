"""Authentication: NativeAuthenticator with an admin account created on first start."""

from __future__ import annotations

import os
import secrets
import sys

from nativeauthenticator import NativeAuthenticator
from traitlets import Unicode


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

    def ensure_admin(self) -> None:
        """Create the admin account if it does not exist yet."""
        if self.user_exists(self.admin_name):
            return
        password = os.environ.get("DESILAB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        info = self.create_user(self.admin_name, password)
        if info is None:
            raise ValueError(
                "could not create the admin account: DESILAB_ADMIN_PASSWORD must have at "
                f"least {self.minimum_password_length} characters and not be a common password"
            )
        if "DESILAB_ADMIN_PASSWORD" not in os.environ:
            # printed once: it is not stored anywhere in clear text
            print(
                f"\n  desilab: created the admin account {self.admin_name!r} with password: "
                f"{password}\n  (shown only now; change it at /hub/change-password)\n",
                file=sys.stderr,
                flush=True,
            )
        self.log.info("Created the admin account %r", self.admin_name)
