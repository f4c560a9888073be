"""Sign up, approve and log in through the hub's HTML forms, as a person would."""

from __future__ import annotations

import requests


def _form_session(hub, path: str) -> requests.Session:
    session = requests.Session()
    r = session.get(f"{hub.url}{path}", timeout=30)
    r.raise_for_status()
    return session


def sign_up(hub, name: str, password: str, two_factor: bool = False) -> requests.Response:
    session = _form_session(hub, "/hub/signup")
    data = {
        "username": name,
        "signup_password": password,
        "signup_password_confirmation": password,
        "_xsrf": session.cookies.get("_xsrf"),
    }
    if two_factor:
        data["2fa"] = "2fa"
    return session.post(f"{hub.url}/hub/signup", data=data, timeout=30)


def approve(hub, name: str) -> None:
    """The admin logs in and toggles ``name`` to approved on /hub/authorize."""
    from .hub import ADMIN_PASSWORD

    admin = login_session(hub, "admin", ADMIN_PASSWORD)
    r = admin.get(f"{hub.url}/hub/authorize/{name}", allow_redirects=False, timeout=30)
    assert r.status_code == 302, (r.status_code, r.text[-500:])


def login_session(hub, name: str, password: str, otp: str = "") -> requests.Session:
    """A session logged in through /hub/login (raises if the login fails)."""
    session = _form_session(hub, "/hub/login")
    r = session.post(
        f"{hub.url}/hub/login",
        data={
            "username": name,
            "password": password,
            "2fa": otp,
            "_xsrf": session.cookies.get("_xsrf"),
        },
        allow_redirects=False,
        timeout=30,
    )
    if r.status_code != 302:
        raise AssertionError(f"login of {name} failed: {r.status_code}\n{r.text[-1500:]}")
    session.get(f"{hub.url}/hub/home", timeout=30)  # sets the _xsrf cookie for hub forms
    return session


def sign_up_and_approve(hub, name: str, password: str) -> None:
    r = sign_up(hub, name, password)
    assert r.status_code == 200, r.text[-500:]
    approve(hub, name)
