#!/usr/bin/env bash
# Build the throw-away TensorFlow reference environment of bench/reference/README.md:
# Python 3.11, tensorflow-cpu 2.13.1, voxelmorph @ca28315 and neurite @95b2b56 (from git: no PyPI release
# has HyperVxmJoint), every other package pinned to the versions the committed fixtures were made with.
# Nothing in ilex or its tests imports TensorFlow; this venv lives outside the repository.
#
#   bash bench/reference/build_tf_env.sh [PREFIX]          # PREFIX defaults to /tmp/tfref
#
# Environment variables:
#   PYTHON   interpreter for the venv (default python3.11; tensorflow-cpu 2.13.1 has wheels for 3.8-3.11)
#   VXM_GIT  a git directory (bare or not) of github:voxelmorph/voxelmorph holding commit ca28315
#            (default /work/.mirror/voxelmorph+voxelmorph/repo if present, else cloned from GitHub)
#   NE_GIT   the same for github:adalca/neurite holding 95b2b56
#            (default /work/.mirror/adalca+neurite/repo if present, else cloned from GitHub)
# About 2 GB and a few minutes with a warm pip cache. The resolved `pip freeze` is written to PREFIX/freeze.txt.
set -euo pipefail

PREFIX=${1:-/tmp/tfref}
PYTHON=${PYTHON:-python3.11}
VXM_REV=ca28315
NE_REV=95b2b56

"$PYTHON" -c 'import sys; assert sys.version_info[:2] <= (3, 11), "tensorflow-cpu 2.13.1 needs Python <= 3.11"'

SRC=$(mktemp -d /tmp/tfref_src.XXXXXX)
trap 'rm -rf "$SRC"' EXIT

# source of one repository at one commit: git archive from a local git dir, else a fresh clone
export_rev() { # url default_dir rev dest paths...
  local url=$1 dir=$2 rev=$3 dest=$4
  shift 4
  mkdir -p "$dest"
  if [[ ! -d "$dir" ]]; then
    dir="$SRC/clone.$(basename "$dest")"
    git clone --quiet --bare "$url" "$dir"
  fi
  git -C "$dir" archive "$rev" "$@" | tar -x -C "$dest"
}
export_rev https://github.com/voxelmorph/voxelmorph "${VXM_GIT:-/work/.mirror/voxelmorph+voxelmorph/repo}" \
  "$VXM_REV" "$SRC/vxm" setup.py voxelmorph # data/ is git LFS, not needed
export_rev https://github.com/adalca/neurite "${NE_GIT:-/work/.mirror/adalca+neurite/repo}" \
  "$NE_REV" "$SRC/ne" setup.py neurite

rm -rf "$PREFIX"
"$PYTHON" -m venv "$PREFIX"
PIP=("$PREFIX/bin/python" -m pip --disable-pip-version-check)
# Pinned: the versions of bench/reference/README.md ("Resolved versions used for the committed fixtures");
# numpy 1.24.3 is the newest tensorflow 2.13.1 accepts.
"${PIP[@]}" install --quiet \
  tensorflow-cpu==2.13.1 keras==2.13.1 numpy==1.24.3 surfa==0.6.3 h5py==3.16.0 nibabel==5.2.1 scipy==1.15.3 \
  pystrum==0.4 tqdm matplotlib scikit-image scikit-learn packaging six
"${PIP[@]}" install --quiet --no-deps "$SRC/vxm" "$SRC/ne"
"${PIP[@]}" freeze > "$PREFIX/freeze.txt"
echo "$VXM_REV" > "$PREFIX/voxelmorph.rev"
echo "$NE_REV" > "$PREFIX/neurite.rev"

"$PREFIX/bin/python" - <<'EOF'
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import platform, numpy, tensorflow as tf, voxelmorph, neurite
assert tf.__version__ == "2.13.1", tf.__version__
assert hasattr(voxelmorph.networks, "HyperVxmJoint")
print(f"tfref ready: Python {platform.python_version()}, tensorflow {tf.__version__}, numpy {numpy.__version__}")
EOF
