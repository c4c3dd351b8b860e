#!/usr/bin/env bash
# After make generate: fails when the generated eBPF files differ from the
# committed ones. The Go bindings must match byte for byte. The objects must
# match in their code (disassembly and relocations) and section sizes: clang
# 19 orders the BTF types of destroy.bpf.c differently from one bpf2go run
# to the next (the same code, types and sizes), so their bytes cannot be
# compared. An object that matches is restored to the committed one.
set -euo pipefail
cd "$(dirname "$0")/.."
OBJDUMP=${LLVM_OBJDUMP:-llvm-objdump-19}
READELF=${LLVM_READELF:-llvm-readelf-19}
fail() { echo "generated eBPF files are stale ($1): run make generate and commit"; exit 1; }
git diff --quiet -- tracer/ ':(exclude)tracer/*.o' || { git diff --stat -- tracer/ ':(exclude)tracer/*.o'; fail "Go bindings"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in $(git diff --name-only -- 'tracer/*.o'); do
	git show "HEAD:$f" >"$tmp/old.o"
	code() { "$OBJDUMP" -d -r --no-show-raw-insn "$1" | tail -n +3; }
	sections() { "$READELF" -S -W "$1" | awk '/^ *\[/ {print $2, $3, $6}'; }
	diff <(code "$tmp/old.o") <(code "$f") >/dev/null || fail "$f: code"
	diff <(sections "$tmp/old.o") <(sections "$f") >/dev/null || fail "$f: sections"
	git checkout -q -- "$f"
done
