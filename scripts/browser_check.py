"""Open an HTML report in headless Chromium: check it rendered, save a screenshot, time it.

    python scripts/browser_check.py report.html [--screenshot out.png] [--height 2600]

Runs Debian's ``chromium`` twice on the file (``--dump-dom`` with console logging to standard
error, then ``--screenshot``), each with a fresh profile and no network services, and checks:

* the dumped DOM holds the charts (``<svg class="chart``, ``<polyline``, markers);
* the console shows no ``Uncaught`` error (nor any ``CONSOLE`` error line);
* the screenshot (decoded here, no imaging library needed) has the charts' colours: the first
  slot's line (#1f77b4) and, when the page has them, the soft-limit line (#ff7f0e).

Prints one line per check and the wall time of each Chromium run next to that of an empty page
(the difference is the page's own load and render time); exit status 0 when every check passed,
1 when one failed, 77 when no Chromium is installed. Used by tests/integration/test_report_browser.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--hide-scrollbars", "--disable-default-apps"]
SKIP = 77


def chromium() -> str | None:
    for path in (os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def run(exe: str, args: list[str], timeout: float = 120.0) -> tuple[float, str, str]:
    """Run Chromium with a fresh profile; returns (seconds, stdout, stderr)."""
    with tempfile.TemporaryDirectory(prefix="memguard-chromium-") as profile:
        started = time.perf_counter()
        done = subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
        return time.perf_counter() - started, done.stdout, done.stderr


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB(A) rows of an 8-bit truecolour PNG (what Chromium writes)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width = 8, b"", 0
    height = depth = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if depth != 8 or colour not in (2, 6):
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour})")
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3))
        previous = line
    return width, height, rows


def count_colour(rows: list[bytes], rgb: str, tolerance: int = 24) -> int:
    """Pixels within ``tolerance`` (per channel) of ``#rrggbb``."""
    target = bytes.fromhex(rgb.lstrip("#"))
    found = 0
    for row in rows:
        for i in range(0, len(row) - 2, 3):
            if (abs(row[i] - target[0]) <= tolerance and abs(row[i + 1] - target[1]) <= tolerance
                    and abs(row[i + 2] - target[2]) <= tolerance):
                found += 1
    return found


def check(page: Path, screenshot: Path, height: int = 2600) -> tuple[bool, list[str]]:
    """Render ``page``; returns (all passed, report lines)."""
    exe = chromium()
    if exe is None:
        return False, ["SKIP no chromium (apt-get install -y chromium)"]
    url = page.resolve().as_uri()
    lines: list[str] = []
    ok = True

    def verdict(passed: bool, text: str) -> None:
        nonlocal ok
        ok = ok and passed
        lines.append(("PASS " if passed else "FAIL ") + text)

    blank = Path(tempfile.mkdtemp(prefix="memguard-blank-")) / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    empty_s, _out, _err = run(exe, ["--dump-dom", blank.resolve().as_uri()])
    dom_s, dom, log = run(exe, ["--enable-logging=stderr", "--v=0", "--dump-dom", url])
    charts = len(re.findall(r'<svg class="chart', dom))
    markers = dom.count('class="marker')
    verdict(charts > 0 and "<polyline" in dom, f"DOM: {charts} charts, {dom.count('<polyline')} polylines, "
                                               f"{markers} markers")
    errors = [line for line in log.splitlines() if "Uncaught" in line or ("CONSOLE" in line and "ERROR" in line)]
    verdict(not errors, "console: " + ("no errors" if not errors else "; ".join(errors[:3])))
    shot_s, _out, shot_err = run(exe, [f"--window-size=1100,{height}", f"--screenshot={screenshot}", url])
    if not screenshot.exists():
        verdict(False, f"screenshot not written: {shot_err.strip()[-300:]}")
        return ok, lines
    width, rows_h, rows = png_pixels(screenshot)
    slot = count_colour(rows, "#1f77b4")
    soft = count_colour(rows, "#ff7f0e")
    verdict(slot > 200, f"screenshot {width}x{rows_h}: {slot} px of the first slot's colour, {soft} px of the "
                        f"soft-limit/recycle colour ({screenshot})")
    if "soft limit" in dom:
        verdict(soft > 50, "soft-limit line and recycle markers drawn")
    lines.append(f"TIME chromium --dump-dom: {dom_s:.2f} s for the report, {empty_s:.2f} s for an empty page "
                 f"(report's own load+render ~{max(0.0, dom_s - empty_s):.2f} s); --screenshot {shot_s:.2f} s; "
                 f"{page.stat().st_size:,} bytes")
    shutil.rmtree(blank.parent, ignore_errors=True)
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--height", type=int, default=2600)
    args = parser.parse_args(argv)
    shot = args.screenshot or args.page.with_suffix(".png")
    if chromium() is None:
        print("SKIP no chromium (apt-get install -y chromium)")
        return SKIP
    ok, lines = check(args.page, shot, args.height)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
