#!/usr/bin/env bash
# Fetch the transformers source distribution whose tests/test_modeling_common.py tests/test_transformers_common.py
# runs against our model (tests/transformers_common.py reads it; nothing is extracted into the repository).
#
# Usage: scripts/fetch_transformers_tests.sh [DEST]
#   DEST defaults to $VAEMOTION_TRANSFORMERS_SDIST, else ${XDG_CACHE_HOME:-~/.cache}/vaemotion/transformers-<v>.tar.gz,
#   where <v> is the transformers version installed in the active Python. A file already there is kept.
set -euo pipefail

python=${PYTHON:-python}
version=$("$python" -c 'import transformers; print(transformers.__version__)')
dest=${1:-${VAEMOTION_TRANSFORMERS_SDIST:-${XDG_CACHE_HOME:-$HOME/.cache}/vaemotion/transformers-$version.tar.gz}}

if [ -s "$dest" ]; then
  echo "transformers $version sdist already at $dest"
  exit 0
fi
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-binary :all: forces the sdist (the wheel has no tests). pip prepares its metadata in an isolated build env
# (setuptools fetched from the index), which works in any venv; nothing is installed.
"$python" -m pip download -q --no-deps --no-binary :all: "transformers==$version" -d "$tmp"
mv "$tmp/transformers-$version.tar.gz" "$dest"
echo "transformers $version sdist saved to $dest"
