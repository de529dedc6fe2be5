"""End to end, as a student meets it: JupyterLab in headless Chromium runs notebook 01 (smoke mode).

Needs Debian's `chromium` (never a downloaded browser) and Playwright for Python; without Chromium the
test is skipped and says why. The screenshot lands in artifacts/jupyterlab-01.png.
"""
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                                 "(apt-get install chromium); the JupyterLab browser test needs it")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(command: list, probe: str, log_path: Path, **popen):
    """Run ``command`` (a web server) until the block ends, once ``probe`` (a URL) answers; its
    output goes to ``log_path``, whose end is raised with the error if it never answers."""
    log = open(log_path, "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(probe, timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{command[1:3]} did not start:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a random localhost port with a token, serving a copy of notebook 01."""
    shutil.copy(ROOT / "notebooks" / "01_cnn_vs_resnet.ipynb", tmp_path)
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "EVA_SMOKE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / ".jupyter-runtime")}
    env.setdefault("EVA_DATA_DIR", str(ROOT / "data"))
    url = f"http://127.0.0.1:{port}"
    with served([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                 "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                 f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
                 "--LabApp.news_url=", "--LabApp.check_for_updates_class="
                 "jupyterlab.NeverCheckForUpdate"], f"{url}/api/status?token={token}",
                tmp_path / "jupyterlab.log", env=env):
        yield url, token


def run_all_cells(page, attempts: int = 3) -> None:
    """Run > Run All Cells, until some cell has started. The menu item stays disabled until the
    notebook has focus and its kernel is connected, and a click on it then does nothing."""
    started = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]" \
              ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"
    for _ in range(attempts):
        page.locator(".jp-NotebookPanel .jp-Cell").first.click()
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(started, timeout=20_000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError("Run All Cells never started a cell")


def test_notebook_01_runs_in_jupyterlab(lab):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    url, token = lab
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/01_cnn_vs_resnet.ipynb?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=90_000)
            run_all_cells(page)
            # done when every code cell shows an execution number and the kernel is idle again
            wait_for = float(os.environ.get("EVA_BROWSER_TIMEOUT", "300")) * 1000
            page.wait_for_function("""() => {
                const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
            }""", timeout=wait_for)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=60_000)
            page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
            errors = page.locator("[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.first.inner_text()
            plots = page.locator(".jp-OutputArea-output img")
            assert plots.count() >= 1  # the accuracy/loss figure
            assert plots.first.evaluate("img => img.naturalWidth") > 300
            # every cell's text, rendered or not (inner_text has only the cells in view)
            text = page.locator(".jp-Notebook").text_content()
            assert re.search(r"CNN\s+test accuracy\s+[\d.]+ % \(assignment 74\.2 %\)", text)
            assert re.search(r"ResNet\s+test accuracy\s+[\d.]+ % \(assignment 73\.8 %\)", text)
        finally:
            page.screenshot(path=str(artifacts / "jupyterlab-01.png"), full_page=True)
            browser.close()
