#!/bin/sh
# containerd facts of a host, printed as one JSON object. Read-only.
#   version            installed containerd's version ("" when not installed)
#   config             base64 of the config file (arg 1), or of `containerd config default`
#                      when the file is absent ("" when containerd is not installed)
#   config_exists      whether the config file exists
#   cap_sys_resource   whether CAP_SYS_RESOURCE is in this host's capability bounding set
#   systemd_pid1       whether systemd runs as PID 1
#   active             whether the containerd service is active
set -u
config_file=${1:-/etc/containerd/config.toml}
version=""
config=""
exists=false
if command -v containerd >/dev/null 2>&1; then
  version=$(containerd --version 2>/dev/null | awk '{print $3}')
  if [ -f "$config_file" ]; then
    exists=true
    config=$(base64 -w0 < "$config_file")
  else
    config=$(containerd config default 2>/dev/null | base64 -w0)
  fi
fi
capbnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
if [ $(( 0x${capbnd:-0} >> 24 & 1 )) -eq 1 ]; then cap=true; else cap=false; fi
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then pid1=true; else pid1=false; fi
if systemctl is-active --quiet containerd 2>/dev/null; then active=true; else active=false; fi
printf '{"version": "%s", "config": "%s", "config_exists": %s, "cap_sys_resource": %s, "systemd_pid1": %s, "active": %s}\n' \
  "$version" "$config" "$exists" "$cap" "$pid1" "$active"
