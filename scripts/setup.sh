#!/usr/bin/env bash
# Copyright 2026 The p3d_perception Authors
# SPDX-License-Identifier: Apache-2.0
#
# `make setup`: everything p3d_perception needs on a fresh Debian 12 machine with
# Python 3.11 and root, installed into this checkout (nothing global but apt
# packages and two compatibility links under /opt/python, see below):
#   1. apt packages open3d and the interface build need (when missing)
#   2. .venv with every Python dependency pinned in requirements.txt and the ROS 2 wheel
#      set (requirements-ros-jazzy.txt; P3D_ROS_DISTRO=kilted for requirements-ros-kilted.txt)
#   3. p3d_perception_interfaces built with cmake into ./install
#   4. p3d_perception installed (editable) into .venv: `p3d`, `perception_node`
#   5. the ament index entry, share/p3d_perception and lib/p3d_perception/ (what colcon
#      installs), so `ros2 launch|run|pkg` find the package
#   6. install/setup.bash: the one file to source for a shell that runs the node
# Idempotent: a stamp of the inputs makes a second run with nothing to do fast.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PREFIX="$ROOT/install"
BUILD="$ROOT/build/p3d_perception_interfaces"
STAMP="$VENV/.p3d_setup_stamp"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# The registry's torch build must be used (torchvision's compiled ops are built
# against it); this machine's pip config points at a folder with a CPU-only torch
# that pip would otherwise prefer, so ignore pip config files and find-links.
export PIP_CONFIG_FILE=/dev/null
unset PIP_FIND_LINKS PIP_NO_INDEX || true
export PIP_DISABLE_PIP_VERSION_CHECK=1

# ROS 2 wheel set: Jazzy (LTS) by default; P3D_ROS_DISTRO=kilted for the Kilted set.
ROS_SET="${P3D_ROS_DISTRO:-jazzy}"
ROS_REQ="requirements-ros-$ROS_SET.txt"
[ -f "$ROS_REQ" ] || { echo "[setup] P3D_ROS_DISTRO=$ROS_SET: no $ROS_REQ (jazzy or kilted)" >&2; exit 1; }

inputs_hash() {
  echo "$ROS_SET"
  cat requirements.txt "$ROS_REQ" setup.py setup.cfg package.xml scripts/setup.sh \
      p3d_perception_interfaces/CMakeLists.txt p3d_perception_interfaces/package.xml \
      p3d_perception_interfaces/msg/* p3d_perception_interfaces/srv/* | sha256sum | cut -d' ' -f1
}

# --- 1. system packages --------------------------------------------------------
APT_PACKAGES=(libusb-1.0-0 libgl1 libgomp1 cmake g++ make)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- fast path -----------------------------------------------------------------
HASH="$(inputs_hash)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && [ -f "$PREFIX/setup.bash" ] \
   && [ -e /opt/python/cp311-cp311/include/python3.11 ]; then
  log "up to date (delete $STAMP to force)"
  exit 0
fi

# --- 2. virtual environment ----------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" - <<'PYCHECK'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f'p3d_perception needs Python 3.11 (the ROS 2 wheels are cp311); got {sys.version}')
PYCHECK
log "pip: installing requirements.txt and $ROS_REQ (first run downloads a few GB: torch with CUDA libraries)"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
# switching sets: the other set's wheels install the same modules, so remove them first
OTHER=$("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | cut -d= -f1 \
        | { if [ "$ROS_SET" = jazzy ]; then grep -E '^ros-' | grep -v '^ros-jazzy-'; \
            else grep '^ros-jazzy-'; fi; } || true)
if [ -n "$OTHER" ]; then
  log "pip: removing the other ROS 2 wheel set"
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip uninstall -q -y $OTHER
fi
"$VENV/bin/python" -m pip install -q -r requirements.txt -r "$ROS_REQ"

# --- 3. interfaces package -------------------------------------------------------
# The ROS wheels' exported CMake targets name the include dirs of the Python they
# were built with (/opt/python/cp311-cp311/...); point those at ours.
PY_INC="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_INC="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
for pair in "/opt/python/cp311-cp311/include/python3.11=$PY_INC" \
            "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include=$NP_INC"; do
  link="${pair%%=*}"; target="${pair#*=}"
  if [ "$(readlink "$link" 2>/dev/null)" != "$target" ]; then
    mkdir -p "$(dirname "$link")" 2>/dev/null || sudo mkdir -p "$(dirname "$link")"
    ln -sfn "$target" "$link" 2>/dev/null || sudo ln -sfn "$target" "$link"
  fi
done
log "building p3d_perception_interfaces into $PREFIX"
rm -rf "$BUILD"
mkdir -p "$BUILD"
(
  export CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
  cmake -S p3d_perception_interfaces -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$PREFIX" \
        -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >"$BUILD/cmake.log" 2>&1 \
    || { tail -40 "$BUILD/cmake.log"; exit 1; }
  cmake --build "$BUILD" -j "$(nproc)" >"$BUILD/build.log" 2>&1 || { tail -40 "$BUILD/build.log"; exit 1; }
  cmake --install "$BUILD" >"$BUILD/install.log" 2>&1 || { tail -40 "$BUILD/install.log"; exit 1; }
)

# --- 4. this package -------------------------------------------------------------
log "installing p3d_perception (editable) into .venv"
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >"$ROOT/build/pip-editable.log" 2>&1 \
  || { tail -40 "$ROOT/build/pip-editable.log"; exit 1; }

# --- 5. the ament index entry and share/ as colcon would make them ---------------
# `ros2 pkg prefix|run|launch p3d_perception` look the package up in the ament index
# of a prefix on AMENT_PREFIX_PATH; a symlink install keeps edits live, as
# `colcon build --symlink-install` does.
log "registering p3d_perception in the ament index of $PREFIX"
SHARE="$PREFIX/share/p3d_perception"
mkdir -p "$PREFIX/share/ament_index/resource_index/packages" "$SHARE" "$PREFIX/lib/p3d_perception"
: >"$PREFIX/share/ament_index/resource_index/packages/p3d_perception"
# launch/ and config/ are real folders of linked files (ros2 launch walks share/ without
# following folder links, as colcon --symlink-install lays it out); models/ is one link.
for item in package.xml README.md models; do
  ln -sfn "$ROOT/$item" "$SHARE/$item"
done
for dir in launch config; do
  [ -L "$SHARE/$dir" ] && rm "$SHARE/$dir"
  rm -rf "$SHARE/$dir"; mkdir -p "$SHARE/$dir"
  for f in "$ROOT/$dir"/*; do [ -f "$f" ] && ln -sfn "$f" "$SHARE/$dir/$(basename "$f")"; done
done
for exe in perception_node managed_perception_node p3d; do
  ln -sfn "$VENV/bin/$exe" "$PREFIX/lib/p3d_perception/$exe"
done

# --- 6. the file to source -------------------------------------------------------
FASTRTPS_LINE="" DISTRO=kilted
if "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("ros-jazzy-rclpy")' 2>/dev/null; then
  FASTRTPS_LINE='export FASTRTPS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-$FASTDDS_DEFAULT_PROFILES_FILE}"'
  DISTRO=jazzy
fi
cat >"$PREFIX/setup.bash" <<ENV
# Source this file for a shell that runs p3d_perception (what a ROS setup.bash does).
# Generated by scripts/setup.sh; p3d and perception_node are then on PATH.
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$PREFIX:$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export LD_LIBRARY_PATH="$PREFIX/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PYTHONPATH="$PREFIX/lib/python3.11/site-packages\${PYTHONPATH:+:\$PYTHONPATH}"
export RMW_IMPLEMENTATION="\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export ROS_DISTRO="\${ROS_DISTRO:-$DISTRO}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Fast DDS shared memory large enough for 640x480 clouds (see config/fastdds.xml); a
# profile the user already chose wins. Fast DDS 2.x (Jazzy) reads the FASTRTPS_ name.
export FASTDDS_DEFAULT_PROFILES_FILE="\${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds.xml}"
$FASTRTPS_LINE
ENV
echo "$HASH" >"$STAMP"
log "done. Use it with:  source install/setup.bash"
