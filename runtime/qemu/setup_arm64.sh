#!/bin/sh
# Set up everything the emulated arm64 device needs, cached under $1 (default build/arm64):
#   1. host tools: qemu-user (qemu-aarch64 loads TCG plugins) and the aarch64 cross toolchain
#   2. an aarch64 sysroot with Python 3.11: Debian arm64 debs through a private apt
#      configuration (the host's own sources; the host never gets a foreign architecture)
#   3. aarch64 site-packages: the TVM runtime and its Python dependencies, as wheels
#   4. the instruction-count TCG plugin and the window-marker library (sparsec's own C)
# Every step is skipped when its stamp exists; `make clean` (rm -rf build) starts over.
set -eu
HOME_DIR=$(realpath -m "${1:-build/arm64}")
HERE=$(dirname "$(realpath "$0")")
PY=${PYTHON:-python3}
mkdir -p "$HOME_DIR"
PACKAGES="qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu"

# 1. host tools
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "arm64 set-up: install the Debian packages: sudo apt-get install $PACKAGES" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $PACKAGES >/dev/null
fi

# 2. the aarch64 sysroot (Python 3.11 and the C/C++ runtime it links)
DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1 libstdc++6 zlib1g \
libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5"
if [ ! -f "$HOME_DIR/sysroot.stamp" ]; then
    APT="$HOME_DIR/apt"
    rm -rf "$APT" "$HOME_DIR/sysroot"
    mkdir -p "$APT/etc/sources.list.d" "$APT/etc/preferences.d" "$APT/state/lists/partial" \
             "$APT/cache/archives/partial" "$APT/debs" "$HOME_DIR/sysroot"
    [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$APT/etc/"
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && cp "$f" "$APT/etc/sources.list.d/"
    done
    cat > "$APT/apt.conf" <<CONF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Dir::Etc "$APT/etc";
Dir::Etc::main "/dev/null";
Dir::Etc::parts "/nonexistent";
Dir::State "$APT/state";
Dir::Cache "$APT/cache";
Debug::NoLocking "true";
CONF
    APT_CONFIG="$APT/apt.conf" apt-get update -qq >/dev/null 2>"$APT/update.log" || true
    (cd "$APT/debs" && APT_CONFIG="$APT/apt.conf" apt-get download -qq $DEBS) || {
        echo "arm64 set-up: could not download the arm64 Python debs (see $APT/update.log)" >&2; exit 1; }
    for deb in "$APT"/debs/*.deb; do dpkg -x "$deb" "$HOME_DIR/sysroot"; done
    rm -rf "$APT/state" "$APT/cache"  # the package lists: 160 MB not needed again
    touch "$HOME_DIR/sysroot.stamp"
fi

# 3. aarch64 site-packages, runtime only (the compiler library and CUDA runtime are dropped)
WHEELS="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 ml_dtypes==0.6.0 \
psutil==7.2.2 cloudpickle==3.1.3 typing_extensions==4.15.0"
if [ ! -f "$HOME_DIR/site-packages.stamp" ]; then
    rm -rf "$HOME_DIR/wheels" "$HOME_DIR/site-packages"
    $PY -m pip download --quiet --only-binary=:all: --no-deps --implementation cp --python-version 3.11 \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
        --platform linux_aarch64 --platform any -d "$HOME_DIR/wheels" $WHEELS
    mkdir -p "$HOME_DIR/site-packages"
    for whl in "$HOME_DIR"/wheels/*.whl; do
        $PY -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$whl" "$HOME_DIR/site-packages"
    done
    find "$HOME_DIR/site-packages" \( -name 'libtvm_compiler.so' -o -name 'libtvm_runtime_cuda*.so' \) -delete
    rm -rf "$HOME_DIR/wheels"
    touch "$HOME_DIR/site-packages.stamp"
fi

# 4. sparsec's own C: the TCG plugin (host) and the marker library (aarch64)
if [ ! -f "$HOME_DIR/libinsncount.so" ] || [ "$HERE/insn_count.c" -nt "$HOME_DIR/libinsncount.so" ]; then
    cc -O2 -shared -fPIC -o "$HOME_DIR/libinsncount.so" "$HERE/insn_count.c"
fi
if [ ! -f "$HOME_DIR/libmarker.so" ] || [ "$HERE/marker.c" -nt "$HOME_DIR/libmarker.so" ]; then
    aarch64-linux-gnu-gcc -O2 -shared -fPIC -o "$HOME_DIR/libmarker.so" "$HERE/marker.c"
fi
echo "arm64 set-up ready in $HOME_DIR"
