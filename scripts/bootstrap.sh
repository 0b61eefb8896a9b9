#!/usr/bin/env bash
# Install what the project needs, and nothing when it is already there (a stamp per input).
#   scripts/bootstrap.sh          system packages + .venv with the pinned Python packages
# System packages come from apt-get (as root, or through sudo); Python packages from the
# pip-compile lock requirements/dev.txt (runtime + torch + dev; `make lock` regenerates it from
# pyproject.toml), installed with pip-sync: what the lock doesn't list is removed. torch is pinned
# to the 2.14.1 build this machine keeps on disk. LOCK=requirements/runtime.txt (or torch.txt)
# syncs a smaller set instead (no tests, then).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# The RTSP test server runs on Debian's python3 with GStreamer's RTSP server.
SYSTEM_PACKAGES=(
  python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  chromium chromium-driver  # the dashboard's browser tests (tests/ui): headless, driven by selenium
)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bootstrap: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

LOCK=${LOCK:-requirements/dev.txt}
stamp=.venv/.bootstrap-$(cat "$LOCK" pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv from $LOCK (first run: a few minutes)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  # pip and pip-tools at the versions dev.txt pins (pip-sync itself leaves them and their own
  # dependencies alone), then exactly the lock: --no-deps, since the lock is complete and
  # opencv-python, which ultralytics asks for, is deliberately not in it (opencv-python-headless is).
  .venv/bin/python -m pip install -q -c requirements/dev.txt pip pip-tools
  # opencv-python and opencv-python-headless install the same cv2/ files: removing the first (a
  # .venv made before the locks had both) takes the second's files with it, so reinstall it.
  gui_cv=0
  .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1 && gui_cv=1
  .venv/bin/pip-sync -q --pip-args "--no-deps" "$LOCK"
  if ((gui_cv)); then
    .venv/bin/python -m pip install -q --no-deps --force-reinstall -c "$LOCK" opencv-python-headless
  fi
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.bootstrap-*
  touch "$stamp"
fi

# The project's own modules as bytecode (stale ones are recompiled, as Python would): a worker
# restarted after a kill -9 then does not compile ~40 modules from source (~0.1 s of its start)
# where Python writes no bytecode itself (PYTHONDONTWRITEBYTECODE). Quick when nothing changed.
# Only a speed-up: a file that does not compile is left to ruff and the tests to report.
.venv/bin/python -m compileall -qq detector_worker gateway || true
