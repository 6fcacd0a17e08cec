# Whether containerd has loaded the node's CNI network: its CRI watches the directory, but on
# hosts whose inotify instances are used up (many container hosts on one machine) it never
# hears of a new file. A stamp records the file's sha256 when containerd was last restarted
# for it. Run by both engines: sh -c "$(cat cni-loaded.sh)" cni-loaded CONF STAMP [restart]
#   without "restart": prints "current" or "stale" (changes nothing)
#   with "restart":    restarts containerd and writes the stamp
conf=$1 stamp=$2
if [ "${3:-}" = restart ]; then
  systemctl restart containerd && mkdir -p "$(dirname "$stamp")" && sha256sum < "$conf" > "$stamp"
  exit
fi
if [ -f "$stamp" ] && [ "$(sha256sum < "$conf")" = "$(cat "$stamp")" ]; then echo current; else echo stale; fi
