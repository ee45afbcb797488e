#!/usr/bin/env bash
# host_build.sh: build an export-micro folder with host_main.cc against TFLM on this machine (reference kernels,
# TFLM's own Makefile) and run it: exits 0 iff it prints the class the export proved (kSampleExpected).
set -euo pipefail

usage() {
  echo "usage: ${0##*/} EXPORT_DIR [TFLM_DIR]   (TFLM_DIR defaults to \$TFLM_DIR; PYTHON: a python3 with numpy and" \
    "Pillow, which TFLM's Makefile runs; BUILD_DIR: where micro_host goes, default a new /tmp folder)" >&2
  exit 64
}
die() { echo "${0##*/}: $*" >&2; exit 1; }

[[ $# -ge 1 && $# -le 2 && $1 != -* ]] || usage
export_dir=$(cd "$1" && pwd) || die "no export folder $1"
tflm=${2:-${TFLM_DIR:-}}
[[ -n $tflm ]] || die "no TFLM tree: pass TFLM_DIR or set \$TFLM_DIR. Get one with
  git clone https://github.com/tensorflow/tflite-micro && git -C tflite-micro checkout 90b983c2b3f1
then, online, 'make -f tensorflow/lite/micro/tools/make/Makefile third_party_downloads' in it."
tflm=$(cd "$tflm" && pwd) || die "no TFLM tree at $tflm"
[[ -f $tflm/tensorflow/lite/micro/tools/make/Makefile ]] || die "$tflm is not a tflite-micro source tree"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

for f in model_data.cc model_data.h model_ops.h model_settings.h labels.h sample_image.h classify.h classify.cc; do
  [[ -f $export_dir/$f ]] || die "$export_dir/$f is missing: pass one model's folder of export-micro (OUTPUT/<model>)"
done

# Third-party code, where TFLM's Makefile looks for it (it downloads what is missing; this script stays offline).
dl=$tflm/tensorflow/lite/micro/tools/make/downloads
for lib in flatbuffers gemmlowp ruy kissfft; do
  [[ -d $dl/$lib ]] || die "$dl/$lib is missing. Online: make -f tensorflow/lite/micro/tools/make/Makefile \
third_party_downloads (in $tflm). Offline: unpack the version tensorflow/lite/micro/tools/make/third_party_downloads.inc \
names there and apply its patch (flatbuffers v25.9.23 + flatbuffers.patch, gemmlowp 719139ce, ruy d3712831, kissfft v130 \
+ third_party/kissfft/kissfft.patch)."
done
mkdir -p "$dl/pigweed"  # only TFLM's code-style check uses pigweed: an empty folder stops the Makefile cloning it

# The Makefile runs `python3 generate_cc_arrays.py` (numpy, Pillow) while it parses: give it such a python3.
py=${PYTHON:-$(command -v "$here/../.venv/bin/python" || command -v python3)} || die "no python3: set PYTHON"
"$py" -c 'import numpy, PIL' 2>/dev/null || die "$py lacks numpy or Pillow (TFLM's Makefile needs them): set PYTHON"
out=${BUILD_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/micro_host.XXXXXX")}
mkdir -p "$out/bin"
printf '#!/bin/sh\nexec %q "$@"\n' "$py" >"$out/bin/python3" && chmod +x "$out/bin/python3"

echo "building libtensorflow-microlite.a (reference kernels) in $tflm/gen ..." >&2
PATH=$out/bin:$PATH make -C "$tflm" -f tensorflow/lite/micro/tools/make/Makefile -j"$(nproc)" microlite >&2
lib=$tflm/gen/linux_$(uname -m)_default_gcc/lib/libtensorflow-microlite.a
[[ -f $lib ]] || die "make did not produce $lib"

# TF_LITE_STATIC_MEMORY as the library was built: it changes TfLiteTensor's layout. TFLM headers are -isystem so the
# warnings shown are the export's own.
g++ -std=c++17 -O2 -Wall -Wextra -DTF_LITE_STATIC_MEMORY -fno-rtti -fno-exceptions -I"$export_dir" \
  -isystem "$tflm" -isystem "$dl/flatbuffers/include" -isystem "$dl/gemmlowp" -isystem "$dl/ruy" \
  "$here/host_main.cc" "$export_dir/classify.cc" "$export_dir/model_data.cc" "$lib" -lm -o "$out/micro_host"
echo "running $out/micro_host" >&2
exec "$out/micro_host"
