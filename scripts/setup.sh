#!/usr/bin/env bash
# Installs everything Caliopen's demo and tests need on a fresh Debian machine:
# Debian packages (scripts/apt-packages.txt), a virtualenv with the project and its test
# extras (.venv), and the Node packages of the second Matrix client (tests/js).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

want_apt=()
while read -r pkg; do
  pkg="${pkg%%#*}"; pkg="${pkg// /}"
  [ -z "$pkg" ] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || want_apt+=("$pkg")
done < scripts/apt-packages.txt
if [ ${#want_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${want_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  echo "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want_apt[@]}" >/dev/null
  # Debian starts daemons on install; the tests run their own copies on loopback ports.
  for svc in dovecot postfix postgresql gammu-smsd; do
    command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1 || true
  done
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
stamp=.venv/.caliopen-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages"
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi

if [ "${1:-}" != "--no-node" ] && [ -f tests/js/package.json ]; then
  if [ ! -d tests/js/node_modules ] || [ tests/js/package.json -nt tests/js/node_modules ]; then
    echo "setup: installing Node packages"
    (cd tests/js && npm install --no-audit --no-fund --silent)
  fi
fi
