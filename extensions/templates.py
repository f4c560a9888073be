"""Shared notebook templates: published read-only, copied without overwriting."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

TEMPLATES_FOLDER = "Templates"
TUTORIALS_FOLDER = "Tutorials"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def shipped_templates() -> Path:
    """The research templates that ship with desilab (``notebooks/templates``)."""
    return NOTEBOOKS / "templates"


def _make_writable(folder: Path) -> None:
    for root, dirs, _ in os.walk(folder):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)


def publish_templates(home: Path, source: str | Path | None = None) -> Path:
    """Publish the templates (and the tutorials) read-only in ``home``.

    ``home/Templates`` becomes a copy of ``source`` (default: the shipped
    templates) and ``home/Tutorials`` a copy of the shipped tutorials.
    Returns the Templates folder.
    """
    publish_read_only(NOTEBOOKS / "tutorials", Path(home) / TUTORIALS_FOLDER)
    return publish_read_only(
        Path(source) if source else shipped_templates(), Path(home) / TEMPLATES_FOLDER
    )


def publish_read_only(source: Path, dest: Path) -> Path:
    """Replace ``dest`` with a read-only copy of ``source``.

    Folders become 0555 and files 0444, owned by whoever publishes (root on a
    multi-account hub), so users can read and copy them but not edit them.
    """
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        _make_writable(dest)
        shutil.rmtree(dest)
    if source.is_dir():
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    else:
        dest.mkdir()
    for root, dirs, files in os.walk(dest, topdown=False):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
    os.chmod(dest, 0o555)
    return dest


def list_templates(home: str | Path | None = None) -> list[str]:
    """Notebook names under ``~/Templates``."""
    folder = Path(home or Path.home()) / TEMPLATES_FOLDER
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.ipynb"))


def copy_template(name: str, home: str | Path | None = None) -> Path:
    """Copy ``Templates/name`` into the home folder and return the new path.

    Never overwrites: if ``name`` exists (the user's edited copy), the copy is
    ``name-1.ipynb``, ``name-2.ipynb``, ... The copy is writable by the user.
    """
    home = Path(home or Path.home())
    folder = home / TEMPLATES_FOLDER
    source = (folder / name).resolve()
    if folder.resolve() not in source.parents or not source.is_file():
        available = ", ".join(list_templates(home)) or "none"
        raise FileNotFoundError(f"no template {name!r} in {folder}; available: {available}")
    target = home / source.name
    n = 0
    while target.exists():
        n += 1
        target = home / f"{source.stem}-{n}{source.suffix}"
    # O_EXCL: a concurrent copy cannot clobber a file created after the check
    with open(source, "rb") as src, open(target, "xb") as dst:
        shutil.copyfileobj(src, dst)
    os.chmod(target, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP)
    return target
