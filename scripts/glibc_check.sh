#!/usr/bin/env bash
# Checks that an ELF binary (or shared library) can load under an older glibc: every versioned
# symbol it imports from glibc (GLIBC_x.y[.z]) must be <= MAX_VERSION (default 2.31: Ubuntu 20.04,
# Debian 11), and every libstdc++ one (GLIBCXX_3.4.n / CXXABI_1.3.n) <= GLIBCXX_MAX (default
# 3.4.28, the libstdc++ of GCC 10 shipped with those) / CXXABI_MAX (1.3.12). GLIBC_PRIVATE is
# always refused. The symbol versions are read with `objdump -T` (or `readelf --dyn-syms` when
# objdump is missing, or with GLIBC_CHECK_TOOL=readelf); a static binary imports nothing and passes.
#
# Usage: scripts/glibc_check.sh BINARY [MAX_VERSION]
# Exit status: 0 passes, 1 needs a newer glibc/libstdc++ (the offending symbols are listed),
# 2 usage error or unreadable file.
set -euo pipefail

usage() { echo "usage: $0 BINARY [MAX_GLIBC_VERSION (default 2.31)]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
bin=$1
max=${2:-2.31}
max_cxx=${GLIBCXX_MAX:-3.4.28}
max_cxxabi=${CXXABI_MAX:-1.3.12}
[ -f "$bin" ] || { echo "glibc_check: no such file: $bin" >&2; exit 2; }
[[ $max =~ ^[0-9]+(\.[0-9]+)+$ ]] || { echo "glibc_check: bad version '$max'" >&2; exit 2; }

# "SYMBOL VERSION" for each imported (undefined) versioned symbol.
imports() {
  local tool=${GLIBC_CHECK_TOOL:-}
  [ -n "$tool" ] || { command -v objdump >/dev/null && tool=objdump; } || tool=readelf
  if [ "$tool" = objdump ]; then
    # 0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main
    # (binutils >= 2.35 drops the parentheses for hidden versions, older prints them always)
    objdump -T "$1" | awk '$0 ~ /\*UND\*/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^\(?(GLIBC|GLIBCXX|CXXABI)_/) {
          v = $i; gsub(/[()]/, "", v); print $NF, v }
      }'
  elif [ "$tool" = readelf ] && command -v readelf >/dev/null; then
    # 1: 0000000000000000 0 FUNC GLOBAL DEFAULT UND __libc_start_main@GLIBC_2.34 (2)
    readelf --dyn-syms -W "$1" | awk '$7 == "UND" && $8 ~ /@/ {
        n = split($8, p, "@+"); print p[1], p[n] }' | awk '$2 ~ /^(GLIBC|GLIBCXX|CXXABI)_/'
  else
    echo "glibc_check: needs objdump or readelf (binutils)" >&2
    exit 2
  fi
}

# ver_le A B: A <= B as dotted versions.
ver_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]; }

head -c 4 "$bin" | grep -q $'^\x7fELF' || { echo "glibc_check: $bin is not an ELF file" >&2; exit 2; }
list=$(imports "$bin") || exit 2
if [ -z "$list" ]; then
  echo "glibc_check: $bin imports no versioned glibc symbols (static or no libc): OK"
  exit 0
fi

bad=0
need_glibc=0.0 need_cxx=""
while read -r sym ver; do
  case $ver in
    GLIBC_PRIVATE)
      echo "  $sym needs GLIBC_PRIVATE (never portable)"; bad=1 ;;
    GLIBC_[0-9]*)
      v=${ver#GLIBC_}
      ver_le "$v" "$need_glibc" || need_glibc=$v
      ver_le "$v" "$max" || { echo "  $sym needs $ver > GLIBC_$max"; bad=1; } ;;
    GLIBCXX_[0-9]*)
      v=${ver#GLIBCXX_}
      { [ -n "$need_cxx" ] && ver_le "$v" "$need_cxx"; } || need_cxx=$v
      ver_le "$v" "$max_cxx" || { echo "  $sym needs $ver > GLIBCXX_$max_cxx"; bad=1; } ;;
    CXXABI_[0-9]*)
      v=${ver#CXXABI_}
      ver_le "$v" "$max_cxxabi" || { echo "  $sym needs $ver > CXXABI_$max_cxxabi"; bad=1; } ;;
  esac
done < <(printf '%s\n' "$list" | sort -u)

summary="needs GLIBC_$need_glibc${need_cxx:+, GLIBCXX_$need_cxx}"
if [ $bad -ne 0 ]; then
  echo "glibc_check: FAIL: $bin $summary; the limit is GLIBC_$max (see the symbols above)"
  exit 1
fi
echo "glibc_check: OK: $bin $summary (<= GLIBC_$max)"
