"""Printing an HTML report to PDF with headless Chromium (the charts get time to draw first)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pruning_core.errors import PruneScopeError

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    override = os.environ.get("PRUNESCOPE_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def print_pdf(html_path, pdf_path, timeout_s: float = 120.0) -> Path:
    """Print an HTML file to PDF with headless Chromium (charts get 10 s of virtual time to render)."""
    chromium = find_chromium()
    if chromium is None:
        raise PruneScopeError("PDF output needs Chromium, which was not found; install it (Debian: "
                              "`apt-get install chromium`) or set PRUNESCOPE_CHROMIUM, or leave out --pdf.")
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    with tempfile.TemporaryDirectory(prefix="prunescope-chromium-") as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--no-pdf-header-footer",
                   "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",
                   f"--print-to-pdf={pdf_path}", html_path.as_uri()]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise PruneScopeError(f"Chromium did not finish printing the PDF within {timeout_s:.0f} s; try again "
                                  "or leave out --pdf.") from None
    if not pdf_path.is_file() or pdf_path.stat().st_size == 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise PruneScopeError(f"Chromium did not write {pdf_path.name} (exit {proc.returncode}): {' / '.join(tail)}")
    return pdf_path

