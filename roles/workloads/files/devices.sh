# Proposes node labels from the devices a node has (opt-in: workloads_detect_devices). Prints a
# JSON object; inventory labels win over it. Run by both engines:
#   sh -c "$(cat devices.sh)" devices [ROOT]      (ROOT: / by default; tests use a scratch tree)
root=${1:-}
has() { for f in "$root"$1; do [ -e "$f" ] && return 0; done; return 1; }
sep=""
printf '{'
label() { printf '%s"%s": "%s"' "$sep" "$1" "$2"; sep=", "; }
if has '/dev/video*'; then label device camera; fi
if has '/dev/gpiochip*'; then label edge-provision.io/gpio true; fi
if has '/dev/ttyUSB*' || has '/dev/ttyACM*'; then label edge-provision.io/serial true; fi
if has '/sys/class/bluetooth/*'; then label edge-provision.io/bluetooth true; fi
printf '}\n'
