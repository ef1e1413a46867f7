#!/usr/bin/env bash
# Tools the test suite needs beyond the Python package. Idempotent.
#  * lmms-eval, for the plugin test. It drags in a CUDA-only torchvision that
#    fails to import next to CPU torch and breaks transformers' image utilities,
#    so torchvision is removed right after, and with it timm (needs torchvision;
#    lmms-eval imports it only for models we do not use), which the `accelerate`
#    command imports at start.
#  * a headless browser (Debian chromium) for the web-demo test.
#  * deepspeed, for the ZeRO-2 tests: built from its sdist without CUDA (DS_BUILD_OPS=0 prebuilds
#    no op; no build isolation, so its setup.py sees the pinned CPU torch instead of pulling a CUDA
#    one; setuptools >= 70.1 builds wheels without the `wheel` package). Its CPU comm op is then
#    JIT-compiled once into the folder the tests use (tests/_train_data.py), ~1-2 min on 2 cores,
#    so that no test pays for it.
set -euo pipefail
venv=${1:-.venv}
"$venv/bin/pip" install -q -c constraints.txt "lmms-eval==0.7.3"
"$venv/bin/pip" uninstall -q -y torchvision timm 2>/dev/null || true
"$venv/bin/pip" install -q -c constraints.txt "setuptools==84.2.1"
DS_BUILD_OPS=0 "$venv/bin/pip" install -q -c constraints.txt --no-build-isolation "deepspeed==0.19.8"
TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${SKYMOE_CACHE:-$HOME/.cache/skymoe}/torch_extensions}" "$venv/bin/python" -c \
  "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "install_test_tools: chromium missing and not root; browser tests will be skipped" >&2
  fi
fi
