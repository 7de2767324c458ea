#!/usr/bin/env bash
# Prints the interpreter `make install` makes .venv with: the first candidate that is Python 3.11 or newer and can
# make a virtualenv with pip. The distribution's own python3.11 comes first: Debian's and Ubuntu's are built with
# profile-guided and link-time optimisation and link libpython statically, where a default pyenv build (often first
# on PATH) has neither, and a gateway worker spends about 10% more CPU a request on it (docs/performance.md,
# "The interpreter"). `make install PYTHON=/path/to/python3.11` chooses another.
set -uo pipefail

for candidate in /usr/bin/python3.11 "$(command -v python3.11)" "$(command -v python3)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] &&
        "$candidate" -c 'import ensurepip, sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "$candidate"
        exit 0
    fi
done
echo "no Python 3.11 that can make a virtualenv (Debian and Ubuntu: apt-get install python3.11-venv)" >&2
exit 1
