#!/usr/bin/env bash
# Build the compiled data path with AddressSanitizer, UndefinedBehaviorSanitizer and libFuzzer's
# coverage instrumentation into a separate folder (never over the normal build in src/):
#   fuzz/build-sanitized.sh PYTHON OUTDIR  ->  OUTDIR/_fastpath<EXT_SUFFIX>
# Run it under LD_PRELOAD of atheris's asan_with_fuzzer.so (fuzz/main.py does).
set -euo pipefail
py=$1
out=$2
src=src/veilgate/fastpath/_fastpath.c
include=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
mkdir -p "$out"
target="$out/_fastpath$suffix"
if [ "$target" -nt "$src" ] && [ "$target" -nt "$0" ]; then
  echo "$target"
  exit 0
fi
# Compiled instrumented, linked without the sanitizer runtimes: their symbols come from the
# runtime preloaded into the Python process (one ASan per process, the one libFuzzer's is built with).
clang -c -fPIC -g -O1 -fno-omit-frame-pointer \
  -fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=undefined \
  -Wall -Wextra -Wno-missing-field-initializers \
  -I"$include" "$src" -o "$out/_fastpath.o" >&2
clang -shared "$out/_fastpath.o" -lcrypto -o "$target" >&2
echo "$target"
