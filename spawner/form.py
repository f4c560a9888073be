"""The HTML options form: one radio button per profile, unavailable ones disabled."""

from __future__ import annotations

from html import escape

from .profiles import Profile

FORM_STYLE = """
<style>
.desilab-profiles label.desilab-profile { display:block; padding:.6em .8em; margin:.4em 0;
  border:1px solid #ccc; border-radius:6px; cursor:pointer; }
.desilab-profiles label.desilab-profile.disabled {
  color:#888; background:#f6f6f6; cursor:not-allowed; }
.desilab-profiles .limits { font-family:monospace; margin-left:.5em; }
.desilab-profiles .reason { color:#a94442; display:block; margin-left:1.6em; }
.desilab-profiles .description { display:block; margin-left:1.6em; }
</style>
"""


def render_options_form(
    choices: list[tuple[Profile, str | None]], ncores: int, selected: str | None
) -> str:
    """HTML for the spawn form.

    Parameters
    ----------
    choices
        Each profile with the reason it can't be used now (None when it can).
    ncores
        Cores of the machine, to show what ``cpus: all`` means.
    selected
        The slug to preselect (the user's last choice or the default).
    """
    usable = [p.slug for p, reason in choices if reason is None]
    if selected not in usable:
        selected = usable[0] if usable else None
    rows = []
    for profile, reason in choices:
        slug = escape(profile.slug)
        attrs = []
        if reason is not None:
            attrs.append("disabled")
        elif profile.slug == selected:
            attrs.append("checked")
        rows.append(
            f'<label class="desilab-profile{" disabled" if reason else ""}" '
            f'for="profile-{slug}" data-profile="{slug}">'
            f'<input type="radio" name="profile" id="profile-{slug}" value="{slug}" '
            f"{' '.join(attrs)}> <strong>{escape(profile.display_name)}</strong>"
            f'<span class="limits">{escape(profile.describe_limits(ncores))}</span>'
            f'<span class="description">{escape(profile.description)}</span>'
            + (f'<span class="reason">Unavailable: {escape(reason)}</span>' if reason else "")
            + "</label>"
        )
    return FORM_STYLE + '<div class="desilab-profiles">' + "\n".join(rows) + "</div>"
