#!/usr/bin/env bash
# Runs the pm-events demo (the README), building the binary first if needed.
# Extra arguments go to `pm-events demo` (e.g. --log-dir /tmp/pm-logs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --release -j2 --manifest-path "$root/Cargo.toml" --bin pm-events
exec "$root/target/release/pm-events" demo "$@"
