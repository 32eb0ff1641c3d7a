#!/usr/bin/env bash
# Headless browser for the frontend test (tests/host/test_host_frontend.py): Debian's chromium
# (never a Playwright browser download) and the pip `playwright` driver inside .venv.
# Idempotent and quiet: installs only what is missing. Never fails the caller: without apt, root or
# network it prints one line and exits 0, and the frontend test skips with the reason.
#   PSG_CHROMIUM=/path/to/chromium   use another Chromium binary (the test reads it too)
set -uo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
CHROMIUM="${PSG_CHROMIUM:-/usr/bin/chromium}"

note() { echo "[setup_browser] $*" >&2; }

if [ ! -x "$CHROMIUM" ]; then
  if [ -n "${PSG_CHROMIUM:-}" ]; then
    note "PSG_CHROMIUM=$CHROMIUM is not executable: frontend test will be skipped"
  elif ! command -v apt-get >/dev/null 2>&1; then
    note "no apt-get: cannot install chromium; frontend test will be skipped"
  else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
      if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        note "not root and no passwordless sudo: cannot install chromium; frontend test will be skipped"
        SUDO="skip"
      fi
    fi
    if [ "$SUDO" != "skip" ]; then
      note "installing Debian chromium (apt-get)"
      export DEBIAN_FRONTEND=noninteractive
      if ! { $SUDO apt-get update -qq >/dev/null 2>&1 \
             && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; then
        note "apt-get install chromium failed: frontend test will be skipped"
      fi
    fi
  fi
fi

if [ -x "$PY" ] && ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  note "installing the playwright driver into .venv (pip; no browser download)"
  if ! PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install -q --disable-pip-version-check playwright \
      2> >(grep -v "is ignored: it is neither" >&2); then
    note "pip install playwright failed: frontend test will be skipped"
  fi
fi
exit 0
