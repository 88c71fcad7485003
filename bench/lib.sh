# Shared by the bench/*.sh scripts: messages, apt installs, the public corpus
# and the chunkstore binary. Source it after setting BENCH_NAME:
#   BENCH_NAME=scenarios; . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck shell=bash

die() { echo "$BENCH_NAME: error: $*" >&2; exit 1; }
say() { echo "$BENCH_NAME: $*" >&2; }

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(git -C "$BENCH_DIR" rev-parse --show-toplevel 2>/dev/null) \
  || die "cannot find the repository root from $BENCH_DIR (is git installed?)"
MAKE_CORPUS="$REPO/../shared/bench/make-corpus"
CORPUS=${CORPUS:-/tmp/chunkstore-corpus}
IS_ROOT=0; [[ $(id -u) -eq 0 ]] && IS_ROOT=1

APT_UPDATED=0
# apt_install PACKAGE...: needs root; runs `apt-get update` once, if a first try fails.
apt_install() {
  [[ $IS_ROOT -eq 1 ]] || die "need root to apt-get install $* (install it yourself or run as root)"
  say "installing $* with apt-get"
  if ! apt-get install -y "$@" >/dev/null 2>&1; then
    if [[ $APT_UPDATED == 0 ]]; then apt-get update >/dev/null 2>&1 || die "apt-get update failed"; APT_UPDATED=1; fi
    apt-get install -y "$@" >/dev/null || die "apt-get install $* failed"
  fi
}

# corpus_has LAYER...: every named layer, and every layer scenarios.txt names,
# is in $CORPUS as .tar and .tar.gz.
corpus_has() {
  [[ -s $CORPUS/scenarios.txt ]] || return 1
  local l
  # shellcheck disable=SC2013  # layer names are words, not lines
  for l in $(awk '!/^#/ {for (i = 2; i <= NF; i++) print $i}' "$CORPUS/scenarios.txt" | sort -u) "$@"; do
    [[ -s $CORPUS/$l.tar && -s $CORPUS/$l.tar.gz ]] || return 1
  done
}

# ensure_corpus LAYER...: build the corpus with make-corpus (root: debootstrap)
# unless corpus_has LAYER... already holds.
ensure_corpus() {
  corpus_has "$@" && return 0
  [[ -f $MAKE_CORPUS ]] || die "corpus missing in $CORPUS and no corpus builder at $MAKE_CORPUS"
  [[ $IS_ROOT -eq 1 ]] || die "corpus missing in $CORPUS; building it needs root (debootstrap)"
  command -v python3 >/dev/null 2>&1 || apt_install python3
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  command -v npm >/dev/null 2>&1 || apt_install npm
  say "building corpus in $CORPUS (about 1-2 minutes)"
  python3 "$MAKE_CORPUS" "$CORPUS" || die "corpus build failed"
  corpus_has "$@" || die "corpus build finished but layers are missing in $CORPUS"
}

# chunkstore_bin: print the binary to bench, $CHUNKSTORE_BIN or a fresh
# `cargo build --release` of this checkout.
chunkstore_bin() {
  local bin
  if [[ -n ${CHUNKSTORE_BIN:-} ]]; then
    bin=$CHUNKSTORE_BIN
  else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (or set CHUNKSTORE_BIN)"
    say "building chunkstore (cargo build --release)"
    (cd "$REPO" && cargo build --release) >&2 || die "cargo build --release failed"
    bin=$REPO/target/release/chunkstore
  fi
  [[ -x $bin ]] || die "chunkstore binary not found or not executable: $bin"
  realpath "$bin"
}

# scratch_dir NAME: a new directory under $STORE_ROOT (default /var/tmp, on disk).
scratch_dir() {
  local root=${STORE_ROOT:-/var/tmp}
  mkdir -p "$root"
  mktemp -d "$root/$1.XXXXXX"
}

# cs STORE ARGS...: run $BIN on STORE, stdout to the caller, stderr shown on
# failure (kept in $WORK/cs.err).
cs() {
  local store=$1; shift
  local err=$WORK/cs.err
  if ! "$BIN" --store "$store" "$@" 2> "$err"; then
    say "command failed: chunkstore --store $store $*"
    sed 's/^/    /' "$err" >&2
    return 1
  fi
}

# json_get FILE EXPR: EXPR is Python over `j` (the parsed JSON).
json_get() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }
now_ns() { date +%s%N; }
# secs T0_NS T1_NS: the seconds between two now_ns readings.
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", (b - a) / 1e9}'; }
# median: of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR%2) print a[m]; else printf "%.3f\n", (a[m]+a[m+1])/2}'; }
