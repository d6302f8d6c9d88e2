#!/usr/bin/env bash
# Prints the interpreter for the project's virtualenvs: Python 3.13 where the machine has it
# (pyenv's 3.13.0 included), else python3 if it is at least 3.11. Exits 1 with a reason otherwise.
set -euo pipefail
ok() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; }
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.13(\.|$)' | sort -V -r); do
    p="$(pyenv root)/versions/$v/bin/python3"
    if [ -x "$p" ] && ok "$p"; then echo "$p"; exit 0; fi
  done
fi
for c in python3.13 python3; do
  if command -v "$c" >/dev/null 2>&1 && ok "$c"; then command -v "$c"; exit 0; fi
done
echo "find-python: need Python >= 3.11 (3.13 preferred); none found on PATH or in pyenv" >&2
exit 1
