#!/usr/bin/env bash
# Builds the tpu-mlir toolchain (compiler + chip simulator) this project compiles bmodels with.
#
#   compile/setup_tpu_mlir.sh [--optional] [DIR]
#       DIR: default $VGLM_TPU_MLIR, else ~/.cache/visualglm-tpu/tpu-mlir-1.30.2
#       --optional: without Python 3.10, say so and succeed (the simulator tests then skip)
#
# tpu-mlir 1.30.2 from PyPI installs only on Python 3.10. On Debian 12 it needs three fixes:
#   1. the wheel bundles an old glibc (libc/libm/libpthread) that its launcher puts on
#      LD_LIBRARY_PATH, after which every tool dies with "GLIBC_2.36 not found": moved aside;
#   2. psutil is imported but not declared: installed;
#   3. the ONNX front end imports torch only for torch.tensor(x).numpy(): a numpy-backed stub
#      named torch is written to DIR/torch-stub (PYTHONPATH), so no torch build is needed.
# Safe to run again: an existing, complete install is left as it is.
set -euo pipefail

VERSION=1.30.2
OPTIONAL=0
if [[ "${1:-}" == "--optional" ]]; then OPTIONAL=1; shift; fi
DIR=${1:-${VGLM_TPU_MLIR:-$HOME/.cache/visualglm-tpu/tpu-mlir-$VERSION}}
if [[ -f "$DIR/.complete" ]]; then
    echo "tpu-mlir $VERSION already set up in $DIR"
    exit 0
fi

find_python310() {
    for candidate in "${PYTHON310:-}" python3.10 "$(pyenv root 2>/dev/null)/versions/3.10"*/bin/python3.10 \
                     "$HOME/.pyenv/versions/3.10"*/bin/python3.10; do
        if [[ -n "$candidate" ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}
PYTHON=$(find_python310) || {
    echo "tpu-mlir $VERSION needs Python 3.10 (not found; set PYTHON310=/path/to/python3.10)" >&2
    if [[ $OPTIONAL == 1 ]]; then
        echo "continuing without it: the chip-simulator tests will be skipped" >&2
        exit 0
    fi
    exit 2
}

rm -rf "$DIR"
"$PYTHON" -m venv "$DIR"
"$DIR/bin/pip" install --quiet --upgrade pip
"$DIR/bin/pip" install --quiet "tpu-mlir[onnx]==$VERSION" psutil

SITE=$("$DIR/bin/python" -c 'import tpu_mlir, os; print(os.path.dirname(tpu_mlir.__file__))')
mkdir -p "$DIR/bundled-glibc"
for lib in libc.so.6 libm.so.6 libpthread.so.0; do
    if [[ -e "$SITE/lib/third_party/$lib" ]]; then
        mv "$SITE/lib/third_party/$lib" "$DIR/bundled-glibc/"
    fi
done

mkdir -p "$DIR/torch-stub/torch"
cat > "$DIR/torch-stub/torch/__init__.py" <<'PY'
"""Stand-in for torch: tpu-mlir's ONNX front end only calls torch.tensor(x).numpy().

Modules it imports on the way (onnxruntime_extensions) define classes on torch.autograd
and torch.nn at import time; every other attribute is an inert placeholder for that."""
import numpy as _np


class _Tensor:
    def __init__(self, data):
        self._data = _np.asarray(data)

    def numpy(self):
        return self._data


def tensor(data, *args, **kwargs):
    return _Tensor(data)


class _Placeholder:
    def __getattr__(self, name):
        return _Placeholder()

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def __mro_entries__(self, bases):
        return (object,)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Placeholder()
PY

touch "$DIR/.complete"
echo "tpu-mlir $VERSION set up in $DIR"
