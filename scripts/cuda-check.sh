#!/usr/bin/env bash
# Compile cohort's CUDA feature on a machine without a GPU and without a system CUDA toolkit.
#
#   scripts/cuda-check.sh            # cargo check -p cohort-model --features cuda
#   scripts/cuda-check.sh build      # also: cargo build -p cohort --features cuda (links the CLI;
#                                    # extra arguments go to that cargo build, e.g. --release)
#   scripts/cuda-check.sh env        # print the environment (eval "$(scripts/cuda-check.sh env)")
#   scripts/cuda-check.sh -- ARGS    # cargo ARGS in that environment
#
# What it does (see docs/cuda.md):
#  1. creates a Python venv under $COHORT_CUDA_CACHE (default ~/.cache/cohort-cuda) and
#     pip-installs NVIDIA's CUDA $CUDA_WHEELS toolkit wheels (nvcc, crt, nvvm, cudart, cccl, nvrtc;
#     for `build` also cublas and curand). CUDA 13's wheels install one toolkit tree,
#     site-packages/nvidia/cu13/{bin,include,lib,nvvm}, laid out like /usr/local/cuda.
#  2. adds the unversioned library names the linker wants (libcudart.so -> libcudart.so.13, ...)
#     and, since no wheel ships the driver, a stub lib/stubs/libcuda.so (soname libcuda.so.1) that
#     defines the driver functions cudarc calls, generated from cudarc's own bindings - the
#     toolkit's lib64/stubs/libcuda.so plays the same role. At run time the real driver is used.
#  3. exports CUDA_ROOT/CUDA_PATH/CUDA_HOME, PATH (nvcc) and CUDA_COMPUTE_CAP (default 80: there is
#     no GPU to ask) and runs cargo with CARGO_TARGET_DIR (default target/cuda in the
#     repository, ignored by git), so CUDA builds do not touch the CPU build's artefacts.
#
# Environment: COHORT_CUDA_CACHE, CUDA_WHEELS (default 13.2; nvcc must be a version cudarc 0.19
# knows: 11.4 to 13.4, and 13.x because CUDA 12's nvcc wheel ships no nvcc), CUDA_COMPUTE_CAP,
# PYTHON (default python3), CARGO_TARGET_DIR, NICE (default 10).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${COHORT_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cohort-cuda}
CUDA_WHEELS=${CUDA_WHEELS:-13.2}
PYTHON=${PYTHON:-python3}
NICE=${NICE:-10}
if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
    CARGO_TARGET_DIR=$REPO/target/cuda
fi
export CARGO_TARGET_DIR

mode=${1:-check}
[[ $# -gt 0 ]] && shift
[[ $mode == -- ]] && mode=cargo

log() { [[ $mode == env ]] || echo "cuda-check: $*" >&2; }

# --- 1. the toolkit wheels ------------------------------------------------------------------------
extras="nvcc,cudart,cccl,nvrtc"
if [[ $mode == build || $mode == cargo ]]; then extras="$extras,cublas,curand"; fi
venv=$CACHE/venv-$CUDA_WHEELS
stamp=$venv/.installed-$extras
if [[ ! -f $stamp ]]; then
    [[ -x $venv/bin/python ]] || { log "creating $venv"; "$PYTHON" -m venv "$venv" >&2; }
    log "pip install cuda-toolkit[$extras]==$CUDA_WHEELS.*"
    "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check \
        "cuda-toolkit[$extras]==$CUDA_WHEELS.*" >&2
    touch "$stamp"
fi
root=$("$venv/bin/python" - <<'EOF'
import glob, os, sysconfig
hits = glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu*", "bin", "nvcc"))
if not hits:
    raise SystemExit("no nvidia/cu*/bin/nvcc in the venv")
print(os.path.dirname(os.path.dirname(hits[0])))
EOF
)

# --- 2. linker names and the driver stub ------------------------------------------------------
for so in "$root"/lib/lib*.so.*; do
    [[ -e $so ]] || continue
    base=$(basename "$so")
    plain=${base%%.so.*}.so
    [[ -e $root/lib/$plain ]] || ln -s "$base" "$root/lib/$plain"
done
stub=$root/lib/stubs/libcuda.so
if [[ ! -f $stub ]]; then
    ver=$(awk '/^name = "cudarc"$/ {getline; gsub(/"/, "", $3); print $3; exit}' "$REPO/Cargo.lock")
    [[ -n $ver ]] || { echo "cuda-check: cudarc not in Cargo.lock" >&2; exit 1; }
    (cd "$REPO" && cargo fetch --quiet >&2)
    sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$ver"/src/driver/sys/mod.rs | head -n1)
    log "driver stub from $sys"
    mkdir -p "$root/lib/stubs"
    grep -oE '^ +fn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/^ +fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
        awk '{print "int " $1 "(void) { return 999; /* CUDA_ERROR_UNKNOWN: stub, never loaded */ }"}' \
            >"$root/lib/stubs/libcuda-stub.c"
    gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$stub" "$root/lib/stubs/libcuda-stub.c"
fi

# --- 3. environment and cargo -----------------------------------------------------------------
export CUDA_ROOT=$root CUDA_PATH=$root CUDA_HOME=$root
export PATH=$root/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}

if [[ $mode == env ]]; then
    printf 'export CUDA_ROOT=%q CUDA_PATH=%q CUDA_HOME=%q\n' "$root" "$root" "$root"
    printf 'export PATH=%q:"$PATH"\n' "$root/bin"
    printf 'export CUDA_COMPUTE_CAP=%q CARGO_TARGET_DIR=%q\n' "$CUDA_COMPUTE_CAP" "$CARGO_TARGET_DIR"
    printf '# run on a GPU machine with: export LD_LIBRARY_PATH=%q\n' "$root/lib"
    exit 0
fi

log "nvcc: $(nvcc --version | sed -n 4p)"
log "CUDA_ROOT=$root CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
cd "$REPO"
run() { log "+ cargo $*"; /usr/bin/time -f "cuda-check: %e s wall, %M KB peak RSS" nice -n "$NICE" cargo "$@"; }
case $mode in
    check) run check -p cohort-model --features cuda "$@" ;;
    build)
        run check -p cohort-model --features cuda
        run build -p cohort --features cuda "$@"
        log "built the cohort binary under $CARGO_TARGET_DIR; it needs LD_LIBRARY_PATH=$root/lib (or a system CUDA 13) and an NVIDIA driver to start"
        ;;
    cargo) run "$@" ;;
    *) echo "usage: $0 [check|build|env|-- CARGO_ARGS]" >&2; exit 2 ;;
esac
