#!/usr/bin/env bash
# Rewrites constraints.txt from a venv on which `make test` passed: every package
# pinned to the version tested, so a new upstream release (a renamed transformers
# argument, a removed filelock module) cannot change what `make demo`/`make test`
# install. Users installing the package get the ranges in pyproject.toml instead.
set -euo pipefail
venv=${1:-.venv}
{
  echo "# Versions \`make test\` passed with; written by scripts/lock_constraints.sh ($(date +%Y-%m-%d))."
  echo "# Every install here goes through this file: it keeps pip from pulling a"
  echo "# multi-GB CUDA torch and from upgrading anything under the tests."
  echo "torch==2.13.0"
  "$venv/bin/pip" freeze --exclude-editable | grep -v -e '^torch==' -e '^WARNING'
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
