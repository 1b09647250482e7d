"""Headless Chromium for the tests: open a page, let it render, read back what it shows.

No Python dependency: the browser is driven through its command line. :func:`probe` writes a
copy of the page with a small script in front that records script errors, console errors and
resources that failed to load, loads every CSS ``background-image`` as an image too, and once
the page has loaded checks that every image decoded (``complete`` with a ``naturalWidth``) and
puts the findings (with the page's rendered text) in a ``<pre>`` that ``--dump-dom`` prints.
:func:`screenshot` saves a PNG of the page.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

#: Names the Debian and upstream packages install the browser under.
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Without the background-networking flags Chromium waits on a network that is not there.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)

PROBE = """<script>
(function () {
  var found = {errors: []};
  window.addEventListener("error", function (e) {
    var t = e.target;
    found.errors.push(t && t.tagName ? "failed to load <" + t.tagName.toLowerCase() + ">"
                                     : "script error: " + e.message);
  }, true);
  var original = console.error;
  console.error = function () {
    found.errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  document.addEventListener("DOMContentLoaded", function () {
    // CSS background images load only when shown: load each one as an <img> (the load event
    // waits for them) so that the check below covers them too
    var urls = new Set();
    for (const sheet of document.styleSheets) {
      for (const rule of sheet.cssRules) {
        var b = rule.style ? rule.style.backgroundImage : "";
        var m = b ? /^url\\("?(.*?)"?\\)$/.exec(b) : null;
        if (m) urls.add(m[1]);
      }
    }
    var box = document.createElement("div");
    box.style.display = "none";
    for (const u of urls) {
      var im = document.createElement("img");
      im.className = "probe-css";
      im.alt = "css background";
      im.src = u;
      box.appendChild(im);
    }
    document.body.appendChild(box);
  });
  window.addEventListener("load", function () {
    var page = [], css = [];
    for (const im of document.images) (im.className === "probe-css" ? css : page).push(im);
    var ok = function (im) { return im.complete && im.naturalWidth > 0; };
    var nav = performance.getEntriesByType("navigation")[0];
    var out = {images: page.length, broken: page.filter(im => !ok(im)).map(im => im.alt),
               css_images: css.length, css_broken: css.filter(im => !ok(im)).length,
               errors: found.errors, title: document.title, text: document.body.innerText,
               load_ms: nav ? nav.loadEventStart : null};
    var pre = document.createElement("pre");
    pre.id = "probe-result";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  });
})();
</script>"""


def find_browser() -> tuple[str | None, str]:
    """``(path, "")`` of a headless-capable Chromium that starts, or ``(None, reason)``."""
    candidates = [os.environ.get("SIAMESE_MARROW_CHROMIUM")] + [shutil.which(n) for n in NAMES]
    for exe in filter(None, candidates):
        try:
            r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"{exe} does not start ({e})"
        if r.returncode == 0:
            return exe, ""
        return None, f"{exe} --version failed: {(r.stderr or r.stdout).strip()[:200]}"
    return None, (
        "no Chromium found (tried " + ", ".join(NAMES) + "); install the Debian package "
        "chromium (apt-get install -y chromium) or set SIAMESE_MARROW_CHROMIUM"
    )


def _run(exe: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def probe(exe: str, page: Path, work: Path, timeout: float = 180) -> dict[str, Any]:
    """Open a copy of ``page`` with the probe script and return its findings: ``images``,
    ``broken`` (alt texts of images that did not decode), ``css_images``, ``css_broken``,
    ``errors``, ``title``, ``text`` (the rendered text), ``load_ms``, and ``wall_s`` (the
    browser's run, start-up included)."""
    raw = page.read_bytes()
    head = re.search(rb"<head[^>]*>(\s*<meta charset=[^>]*>)?", raw)
    assert head, f"{page} has no <head>"
    copy = work / f"probe-{page.name}"
    copy.write_bytes(raw[: head.end()] + PROBE.encode() + raw[head.end() :])
    t0 = time.perf_counter()
    r = _run(exe, ["--virtual-time-budget=30000", "--dump-dom", copy.as_uri()], timeout)
    wall = time.perf_counter() - t0
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', r.stdout, re.S)
    assert found, f"the probe did not report (exit {r.returncode}): {r.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    result["wall_s"] = wall
    return result


def screenshot(exe: str, page: Path, png: Path, width: int = 1280, height: int = 2000) -> float:
    """Save a PNG of ``page`` as a ``width`` x ``height`` window shows it; returns the seconds
    the browser ran."""
    t0 = time.perf_counter()
    r = _run(exe, [f"--window-size={width},{height}", f"--screenshot={png}", page.as_uri()], 180)
    assert png.is_file(), f"no screenshot (exit {r.returncode}): {r.stderr[-2000:]}"
    return time.perf_counter() - t0
