#!/usr/bin/env bash
# Find or fetch the ComfyUI source tree the host tests run against; print its path on stdout.
#   1. $COMFYUI_ROOT, when set (a wrong value is an error, never silently replaced);
#   2. ~/ComfyUI;
#   3. .cache/ComfyUI inside this repo, extracted once from a ComfyUI 0.3.64 source archive:
#      $PSG_COMFYUI_ARCHIVE, else the vendored archive beside the checkout (checked against its
#      .sha256), else a shallow git clone of the v0.3.64 tag.
# Exits non-zero with one line on stderr when no host can be found or set up.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="0.3.64"
CACHE="$repo/.cache/ComfyUI"

is_root() { [ -f "$1/main.py" ] && [ -f "$1/nodes.py" ] && [ -d "$1/comfy" ]; }
fail() { echo "[setup_host] $*" >&2; exit 1; }

if [ -n "${COMFYUI_ROOT:-}" ]; then
  is_root "$COMFYUI_ROOT" || fail "COMFYUI_ROOT=$COMFYUI_ROOT is not a ComfyUI source tree (needs main.py, nodes.py, comfy/)"
  (cd "$COMFYUI_ROOT" && pwd); exit 0
fi
if is_root "$HOME/ComfyUI"; then echo "$HOME/ComfyUI"; exit 0; fi
if is_root "$CACHE"; then echo "$CACHE"; exit 0; fi

archive="${PSG_COMFYUI_ARCHIVE:-}"
vendored="$repo/../shared/vendor/ComfyUI-$VERSION.tar.gz"
if [ -z "$archive" ] && [ -f "$vendored" ]; then
  archive="$vendored"
  if [ -f "$vendored.sha256" ]; then
    (cd "$(dirname "$vendored")" && sha256sum -c --status "$(basename "$vendored").sha256") \
      || fail "$vendored does not match its .sha256: refusing to use it"
  fi
fi

tmp="$repo/.cache/ComfyUI.partial"
rm -rf "$tmp"; mkdir -p "$tmp"
if [ -n "$archive" ]; then
  [ -f "$archive" ] || fail "PSG_COMFYUI_ARCHIVE=$archive does not exist"
  echo "[setup_host] extracting ComfyUI $VERSION from $archive into .cache/ComfyUI (once)" >&2
  tar -xzf "$archive" -C "$tmp" || fail "could not extract $archive"
  src="$tmp/ComfyUI"
  [ -d "$src" ] || src="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
else
  command -v git >/dev/null || fail "no ComfyUI found and git is missing: set COMFYUI_ROOT or PSG_COMFYUI_ARCHIVE"
  echo "[setup_host] cloning ComfyUI v$VERSION into .cache/ComfyUI (once)" >&2
  git clone -q --depth 1 --branch "v$VERSION" https://github.com/comfyanonymous/ComfyUI "$tmp/ComfyUI" \
    || fail "git clone of ComfyUI v$VERSION failed: set COMFYUI_ROOT or PSG_COMFYUI_ARCHIVE"
  src="$tmp/ComfyUI"
fi
is_root "$src" || fail "the ComfyUI source in $archive has no main.py / nodes.py / comfy/"
rm -rf "$CACHE"; mv "$src" "$CACHE"; rm -rf "$tmp"
echo "$CACHE"
