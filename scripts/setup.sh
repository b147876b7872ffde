#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install edgekd with its test tools.
# VENV picks the location; by default a cache directory keyed on the torch pins, so every checkout
# and CI run on a machine shares one 6 GB install instead of repeating it.
set -euo pipefail
cd "$(dirname "$0")/.."
pins=requirements/pins.txt
key=$(sha256sum "$pins" | cut -c1-12)
VENV=${VENV:-$HOME/.cache/edgekd/venv-$key}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.edgekd-$(cat pyproject.toml "$pins" | sha256sum | cut -c1-12)"
# Reinstall when the dependencies changed or the editable install points at another checkout.
here=$(pwd)
if [ ! -f "$stamp" ] || ! (cd / && "$VENV/bin/python" -c "import edgekd, sys; sys.exit(not edgekd.__file__.startswith('$here/'))") 2>/dev/null; then
  "$VENV/bin/pip" install -q -c "$pins" torch torchvision 2> >(grep -v "is ignored: it is neither" >&2)
  "$VENV/bin/pip" install -q -c "$pins" -e ".[train,dev,openvino]" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$stamp"
fi
# Debian packages: Fashion-MNIST is the real data the demo and tests measure on; qemu-user lets the
# tests run ONNX Runtime's INT8 kernels as a CPU without VNNI would (x86 only).
apt_missing=()
[ -d /usr/share/datasets/fashion-mnist ] || apt_missing+=(dataset-fashion-mnist)
# OpenSSH's server: the tests bench over ssh against an sshd they start on 127.0.0.1 (bench --remote).
[ -x /usr/sbin/sshd ] || apt_missing+=(openssh-server)
[ "$(uname -m)" = x86_64 ] && ! command -v qemu-x86_64 >/dev/null && apt_missing+=(qemu-user)
if [ ${#apt_missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
echo "$VENV"
