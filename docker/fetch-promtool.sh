#!/bin/sh
# Puts promtool (from Debian's `prometheus` package, without installing the server) into
# DIR, so the alert-rule replay tests (tests/unit/test_alert_rules.py) run. Best effort:
# on a machine without apt or root it says so and the replay test reports itself skipped.
set -eu
mkdir -p "${1:?usage: fetch-promtool.sh DIR}"
dir="$(cd "$1" && pwd)"
command -v promtool >/dev/null 2>&1 && exit 0
[ -x "$dir/promtool" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  echo "promtool: not on PATH and cannot fetch it here (needs apt-get as root); the alert replay test will skip"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download prometheus >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get download prometheus >/dev/null 2>&1 || { echo "promtool: download failed; the alert replay test will skip"; exit 0; }
fi
dpkg -x prometheus_*.deb x

cp x/usr/bin/promtool "$dir/promtool"
echo "promtool: $("$dir/promtool" --version 2>&1 | head -1)"
