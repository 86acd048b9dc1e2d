#!/usr/bin/env bash
# Install other transformers releases side by side (no dependencies, one folder each) for the test that loads a
# pushed checkpoint as remote code under each of them (tests/test_hub.py), as users with those releases would.
#
# Usage: scripts/fetch_transformers_releases.sh [VERSION ...]
#   VERSION defaults to two older minors, 5.20.2 and 5.22.2 (what CI checks); the whole range we support is
#   5.20.2 5.21.0 5.22.2 5.23.0 5.25.0 besides the installed 5.24. Each goes to
#   ${VAEMOTION_TRANSFORMERS_RELEASES:-${XDG_CACHE_HOME:-~/.cache}/vaemotion/transformers-releases}/<version>;
#   a folder already there is kept.
set -euo pipefail

python=${PYTHON:-python}
root=${VAEMOTION_TRANSFORMERS_RELEASES:-${XDG_CACHE_HOME:-$HOME/.cache}/vaemotion/transformers-releases}
versions=("$@")
if [ ${#versions[@]} -eq 0 ]; then
  versions=(5.20.2 5.22.2)
fi
for version in "${versions[@]}"; do
  dest="$root/$version"
  if [ -d "$dest/transformers" ]; then
    echo "transformers $version already at $dest"
    continue
  fi
  tmp="$dest.partial"
  rm -rf "$tmp"
  # --no-deps: the release runs on the installed tokenizers, huggingface_hub, safetensors and torch; only a
  # requirement of the release that the environment does not meet (5.25 added kernels) goes in beside it
  "$python" -m pip install -q --no-deps --target "$tmp" "transformers==$version"
  "$python" - "$tmp" <<'PY' | while read -r requirement; do "$python" -m pip install -q --no-deps --target "$tmp" "$requirement"; done
import importlib.metadata, pathlib, sys
from packaging.requirements import Requirement

(info,) = pathlib.Path(sys.argv[1]).glob("transformers-*.dist-info")
for line in (info / "METADATA").read_text().splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    requirement = Requirement(line.split(":", 1)[1].strip())
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue  # an extra's requirement
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is None or not requirement.specifier.contains(installed, prereleases=True):
        print(f"{requirement.name}{requirement.specifier}")
PY
  mv "$tmp" "$dest"
  echo "transformers $version installed at $dest"
done
