#!/usr/bin/env bash
# The whole test suite: unit, integration (real files, the built binary) and doc tests.
# Installs what the tests need when it is missing, so it works on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo test -j2 --locked "$@"
