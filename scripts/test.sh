#!/usr/bin/env bash
# The whole test suite: unit, integration (real files, real HTTP servers on 127.0.0.1:0,
# the built binary) and doc tests. Installs what the tests need when it is missing,
# so it works on a fresh machine:
#   - a Python virtualenv (target/test-venv) with `standardwebhooks` (the independent
#     Standard Webhooks implementation the interop tests check against), `cryptography`
#     (an independent Ed25519 verifier), `openapi-spec-validator` (checks the OpenAPI
#     document) and `aiosmtpd`;
#   - nats-server (Debian's package) for the JetStream scale-out tests, which start
#     their own server on a free port in a temporary directory;
#   - chromium and chromium-driver (Debian's packages) for the dashboard tests, which
#     drive the page in a headless browser of their own;
#   - pytest, and the Python package itself: `pip install ./python` builds its wheel
#     (maturin, release profile, into target/) and installs it in the virtualenv,
#     and pytest runs python/tests against it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv="$root/target/test-venv"
if ! "$venv/bin/python" -c "import standardwebhooks, aiosmtpd, cryptography, openapi_spec_validator, pytest" 2>/dev/null; then
  echo "== installing the Python test helpers into $venv"
  mkdir -p "$root/target"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check standardwebhooks aiosmtpd cryptography openapi-spec-validator pytest
fi
export PM_TEST_PYTHON="$venv/bin/python"

# Debian packages, installed as root or with sudo.
apt_install() {
  echo "== installing $*"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

nats=$(command -v nats-server || true)
[ -n "$nats" ] || { [ -x /usr/sbin/nats-server ] && nats=/usr/sbin/nats-server; } || true
if [ -z "$nats" ]; then
  apt_install nats-server
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
fi
export PM_TEST_NATS_SERVER="$nats"

if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  apt_install chromium chromium-driver
fi

cargo test -j2 --locked "$@"

echo "== the Python package: pip install ./python, then pytest python/tests"
CARGO_TARGET_DIR="$root/target" CARGO_BUILD_JOBS=2 \
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python
PM_EVENTS_BIN="$root/target/debug/pm-events" "$venv/bin/python" -m pytest -q python/tests
