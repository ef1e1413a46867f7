#!/usr/bin/env bash
# Tools the test suite needs beyond the Python package. Idempotent.
#  * lmms-eval, for the plugin test. It drags in a CUDA-only torchvision that
#    fails to import next to CPU torch and breaks transformers' image utilities,
#    so torchvision is removed right after, and with it timm (needs torchvision;
#    lmms-eval imports it only for models we do not use), which the `accelerate`
#    command imports at start.
#  * a headless browser (Debian chromium) for the web-demo test.
set -euo pipefail
venv=${1:-.venv}
"$venv/bin/pip" install -q -c constraints.txt "lmms-eval==0.7.3"
"$venv/bin/pip" uninstall -q -y torchvision timm 2>/dev/null || true
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install_test_tools: chromium missing and not root; browser tests will be skipped" >&2
  fi
fi
