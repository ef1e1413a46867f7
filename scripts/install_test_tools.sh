#!/usr/bin/env bash
# Tools the test suite needs beyond the Python package: a headless browser for
# the web-demo test. Idempotent; safe to re-run.
set -euo pipefail
venv=${1:-.venv}
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install_test_tools: chromium missing and not root; browser tests will be skipped" >&2
  fi
fi
