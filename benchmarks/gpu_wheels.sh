#!/usr/bin/env bash
# Downloads, on a machine with PyPI, the wheels that cmbrl needs beside the project's GPU machine's own packages
# (Python 3.12, torch 2.11.0+cu130, numpy, h5py, tqdm, matplotlib, pytest, typer, rich, packaging, cloudpickle; no
# registry there; ../shared/PLATFORM.md), imageio included (gymnasium's MuJoCo envs import it). The pins are the
# versions the CPU CI installs with torch 2.13; torchrl 0.14.1 requires only torch>=2.1, so it runs beside 2.11.
# About 28 MB, into .gpu_wheels/ (git-ignored), which the device tool carries (`carry: [".gpu_wheels"]`).
# docs/gpu.md gives the command that installs them there and runs the check.
#
#   bash benchmarks/gpu_wheels.sh [FOLDER]     # default .gpu_wheels; PYVER=3.11 for another Python
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.gpu_wheels}"
mkdir -p "$dest"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$dest" \
  torchrl==0.14.1 tensordict==0.14.3 pyvers==0.2.3 hoptorch==0.1.4 orjson==3.13.0 importlib_metadata==10.2.0 \
  zipp==4.1.2 gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.1 mujoco-core==4.0.1 mujoco-studio==4.0.1 \
  glfw==2.11.0 pyopengl==3.1.10 minari==0.5.4 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 \
  imageio==2.38.2 setuptools==80.9.0 wheel==0.45.1
ls "$dest"
du -sh "$dest"
