"""Templates are published read-only and copied without overwriting edits."""

from __future__ import annotations

import json
import os

import pytest
from desilab.extensions import copy_template, list_templates, publish_templates


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "voids.ipynb").write_text(json.dumps({"cells": [], "nbformat": 4}))
    (src / "sub" / "deep.ipynb").write_text("{}")
    return src


def test_published_templates_are_read_only(tmp_path, source):
    home = tmp_path / "home"
    home.mkdir()
    folder = publish_templates(home, source)
    assert list_templates(home) == ["sub/deep.ipynb", "voids.ipynb"]
    assert folder.stat().st_mode & 0o777 == 0o555
    assert (folder / "voids.ipynb").stat().st_mode & 0o777 == 0o444
    # publishing again replaces the folder (new templates reach existing users)
    (source / "new.ipynb").write_text("{}")
    publish_templates(home, source)
    assert "new.ipynb" in list_templates(home)


def test_copy_never_overwrites_the_users_edited_copy(tmp_path, source):
    home = tmp_path / "home"
    home.mkdir()
    publish_templates(home, source)
    first = copy_template("voids.ipynb", home)
    assert first == home / "voids.ipynb"
    first.write_text("my edits")
    second = copy_template("voids.ipynb", home)
    assert second == home / "voids-1.ipynb"
    assert first.read_text() == "my edits"
    assert os.access(second, os.W_OK)
    assert copy_template("voids.ipynb", home) == home / "voids-2.ipynb"


def test_copy_refuses_names_outside_the_templates(tmp_path, source):
    home = tmp_path / "home"
    home.mkdir()
    publish_templates(home, source)
    (home / "secret.ipynb").write_text("{}")
    with pytest.raises(FileNotFoundError, match="available: sub/deep.ipynb, voids.ipynb"):
        copy_template("../secret.ipynb", home)
    with pytest.raises(FileNotFoundError, match="no template 'missing.ipynb'"):
        copy_template("missing.ipynb", home)
