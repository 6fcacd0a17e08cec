#!/usr/bin/env bash
# Install what edge-provision needs on a Debian 12 controller: Debian packages and a
# virtualenv at .venv with the project and its test tools. Safe to run again: it only
# does work when the package list or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=.venv/.edge-provision-setup
want=$(cat scripts/debian-packages.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  exit 0
fi

mapfile -t packages < <(grep -Ev '^\s*(#|$)' scripts/debian-packages.txt)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=(); [[ $(id -u) == 0 ]] || sudo=(sudo)
  echo "setup: installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
echo "setup: installing edge-provision and its tools into .venv"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/edge-provision --help >/dev/null
echo "$want" > "$stamp"
