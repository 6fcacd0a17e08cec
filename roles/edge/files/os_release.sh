#!/bin/sh
# The host's OS release as edge-provision names it, <ID>-<major VERSION_ID> from /etc/os-release
# (debian-12, debian-13), then its PRETTY_NAME, one per line. Read-only.
if [ -r /etc/os-release ]; then
  . /etc/os-release
  printf '%s-%s\n%s\n' "${ID:-unknown}" "${VERSION_ID%%.*}" "${PRETTY_NAME:-${ID:-unknown}}"
else
  printf 'unknown\nunknown (no /etc/os-release)\n'
fi
