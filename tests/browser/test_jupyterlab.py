"""A person logs in, picks cpu-small, reaches JupyterLab and runs the getting-started notebook."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.browser import ARTIFACTS
from support.login import sign_up_and_approve

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_login_pick_profile_and_run_getting_started(gpu_hub, browser):
    sign_up_and_approve(gpu_hub, "lab-user", "lab-user-passw0rd")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(90_000)
    try:
        page.goto(f"{gpu_hub.url}/hub/login")
        page.fill("#username_input", "lab-user")
        page.fill("#password_input", "lab-user-passw0rd")
        page.click("#login_submit")
        page.wait_for_url("**/hub/spawn**")
        assert page.locator("#profile-gpu").is_visible()
        page.check("#profile-cpu-small")
        shot(page, "01-spawn-form")
        page.click("input[type=submit], button[type=submit]")
        page.wait_for_url("**/user/lab-user/lab**", timeout=120_000)
        page.wait_for_selector("#jp-main-dock-panel")
        shot(page, "02-jupyterlab")

        page.goto(f"{gpu_hub.url}/user/lab-user/lab/tree/Tutorials/00-getting-started.ipynb")
        page.wait_for_selector(".jp-NotebookPanel .jp-Notebook")
        page.wait_for_selector(".jp-Toolbar-kernelName:has-text('DESI (CPU)')", timeout=120_000)
        page.wait_for_selector(
            ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000
        )
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        # the last cell lists the templates once everything above ran without error
        page.wait_for_selector("text=research-notebook.ipynb", timeout=120_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
        errors = page.locator(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
        )
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        assert tracebacks == [], tracebacks
        text = page.locator(".jp-Notebook").inner_text()
        assert "cpu-small" in text and "as expected: permission denied for schema dr1" in text
        shot(page, "03-getting-started-run")
    except Exception:
        shot(page, "failure")
        raise
    finally:
        page.close()
        gpu_hub.stop_server("lab-user")
