"""Headless Chromium views of a running NNI dashboard: its DOM as text, or a PNG screenshot.

``python -m experiments screenshot --port 8080 [--page detail] --output docs/nnictl_dashboard.png``
takes the picture in the README; ``tests/test_nnictl_e2e.py`` uses the same functions to check
that the dashboard's trial list shows the trials. Needs Debian's ``chromium`` (``apt-get install
chromium``); nothing is fetched from outside (the dashboard's icon font then stays blank).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

NAME = "screenshot"
HELP = "a PNG of a running NNI dashboard (headless Chromium), as in the README"

PAGES = {"detail": "/detail", "overview": "/oview"}
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Chromium in its own session, so a timeout ends all its processes (by their group id)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _chromium(url: str, extra: list[str], wait_ms: int, timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="sslnas-chromium-") as profile:
        args = [chromium, *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={wait_ms}", *extra, url]
        return _run(args, timeout)


def dashboard_url(port: int, page: str = "detail", host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}{PAGES.get(page, page)}"


def dump_dom(url: str, wait_ms: int = 15000, timeout: float = 120) -> str:
    """The page's DOM after its scripts ran (the dashboard fills its tables from the REST API)."""
    return _chromium(url, ["--dump-dom"], wait_ms, timeout).stdout


def screenshot(url: str, output: str | Path, size: tuple[int, int] = (1400, 900), wait_ms: int = 15000,
               timeout: float = 120) -> Path:
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    done = _chromium(url, [f"--window-size={size[0]},{size[1]}", f"--screenshot={output}"], wait_ms, timeout)
    if not output.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return output


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, required=True, help="the dashboard's port (nnictl create --port)")
    p.add_argument("--page", default="detail", help="detail (trial list) or overview")
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--size", default="1400x900", help="window size, WIDTHxHEIGHT")


def run(args) -> int:
    from experiments.core.errors import ConfigError

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size: expected WIDTHxHEIGHT, e.g. 1400x900, got {args.size!r}") from None
    try:
        path = screenshot(dashboard_url(args.port, args.page), args.output, (width, height))
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
        raise ConfigError(str(err)) from None
    print(f"written: {path}")
    return 0
