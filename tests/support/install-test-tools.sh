#!/bin/sh
# Tools a few tests drive for real, from Debian's packages, installed by `make test` when
# missing: pgbouncer (the transaction-mode pooler tests, tests/integration/test_pooler.py)
# and promtool (from the `prometheus` package, extracted without installing the server, for
# the alert-rule replays in tests/unit/test_alert_rules.py). Best effort: without apt-get
# as root it says so; those tests then skip with that reason, except under CI=true, where
# they fail.
set -u
bin="${1:?usage: install-test-tools.sh DIR}"
mkdir -p "$bin"
bin="$(cd "$bin" && pwd)"
can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }
updated=""
apt_update_once() { [ -n "$updated" ] || { apt-get update -qq >/dev/null 2>&1; updated=1; }; }

if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if can_apt; then
    echo "test tools: installing pgbouncer (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null 2>&1 || {
      apt_update_once
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null 2>&1 ||
        echo "test tools: pgbouncer could not be installed"
    }
    # The package starts a pgbouncer service on 6432; the tests start their own.
    command -v systemctl >/dev/null 2>&1 || pkill -x pgbouncer 2>/dev/null || true
  else
    echo "test tools: pgbouncer missing and no apt-get as root; the pooler tests will skip"
  fi
fi

if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$bin/promtool" ]; then
  if can_apt; then
    tmp="$(mktemp -d)"
    (
      cd "$tmp" || exit 1
      apt-get download prometheus >/dev/null 2>&1 || { apt_update_once; apt-get download prometheus >/dev/null 2>&1; }
      dpkg -x prometheus_*.deb x 2>/dev/null && cp x/usr/bin/promtool "$bin/promtool"
    ) && echo "test tools: promtool $("$bin/promtool" --version 2>&1 | head -1 | cut -d' ' -f3)" ||
      echo "test tools: promtool could not be fetched"
    rm -rf "$tmp"
  else
    echo "test tools: promtool missing and no apt-get as root; the alert replay test will skip"
  fi
fi
exit 0
