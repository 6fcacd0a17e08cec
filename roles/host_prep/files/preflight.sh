#!/bin/sh
# Preflight facts of a host, printed as one JSON object. Read-only.
set -u
arch=$(uname -m)
kernel=$(uname -r)
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
  cgroup=v2
elif [ -d /sys/fs/cgroup/unified ]; then
  cgroup=v1-hybrid
else
  cgroup=v1
fi
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then pid1=true; else pid1=false; fi
printf '{"architecture": "%s", "kernel": "%s", "cgroup": "%s", "systemd_pid1": %s}\n' \
  "$arch" "$kernel" "$cgroup" "$pid1"
