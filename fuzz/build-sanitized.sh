#!/usr/bin/env bash
# Build the compiled data path (every src/veilgate/fastpath/*.c, with fastpath.h) with
# AddressSanitizer, UndefinedBehaviorSanitizer and libFuzzer's coverage instrumentation into a
# separate folder (never over the normal build in src/):
#   fuzz/build-sanitized.sh PYTHON OUTDIR  ->  OUTDIR/_fastpath<EXT_SUFFIX>
# Run it under LD_PRELOAD of atheris's asan_with_fuzzer.so (fuzz/main.py does).
set -euo pipefail
py=$1
out=$2
dir=src/veilgate/fastpath
sources=("$dir"/*.c)
include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
mkdir -p "$out"
target="$out/_fastpath$suffix"
fresh=1
for f in "$0" "$dir/fastpath.h" "${sources[@]}"; do
  [ "$target" -nt "$f" ] || fresh=0
done
if [ "$fresh" = 1 ]; then
  echo "$target"
  exit 0
fi
# Compiled instrumented, linked without the sanitizer runtimes: their symbols come from the
# runtime preloaded into the Python process (one ASan per process, the one libFuzzer's is built with).
objects=()
for src in "${sources[@]}"; do
  obj="$out/$(basename "$src" .c).o"
  clang -c -fPIC -g -O1 -fno-omit-frame-pointer \
    -fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined \
    -Wall -Wextra -Wno-missing-field-initializers \
    -I"$include" "$src" -o "$obj" >&2
  objects+=("$obj")
done
clang -shared "${objects[@]}" -lcrypto -o "$target" >&2
echo "$target"
