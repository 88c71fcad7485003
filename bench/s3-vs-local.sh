#!/usr/bin/env bash
# Ingest and export throughput of the public corpus on the S3 backend against
# the local backend, in the same run.
#
# Ingests the corpus layers (.tar, in the order below) into ONE fresh store per
# backend with one `chunkstore ingest` call, then exports every layer (one
# `chunkstore export` process per layer, output to /dev/null), and prints
# wall seconds, MB/s (MB = 10^6 bytes of uncompressed tar) and the S3/local
# ratio. The S3 store is a fresh prefix of a bucket on a Ceph RADOS Gateway on
# 127.0.0.1 (started here with .ci/ceph-rgw-up and stopped at the end, unless
# CHUNKSTORE_S3_ENDPOINT and the AWS_* variables point at one already).
# Each export process starts with a cold S3 block cache; local exports read
# packs the page cache may hold (they were just written), as a hub's would.
#
# Usage: bench/s3-vs-local.sh
# Environment:
#   CORPUS=DIR        corpus directory (default /tmp/chunkstore-corpus; built if missing)
#   REPEAT=N          runs per backend, fresh stores each time; the median is reported (default 3)
#   STORE_ROOT=DIR    where local stores and S3 index directories go (default: under /var/tmp)
#   CHUNKSTORE_BIN=P  use this binary instead of building target/release/chunkstore
#   RESULTS=FILE      also write the report to FILE
set -euo pipefail

BENCH_NAME=s3-vs-local
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LAYERS=(base base2 certs prettier-3.0.3 prettier-3.1.1 prettier-3.2.5 prettier-3.3.3)
REPEAT=${REPEAT:-3}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, got '$REPEAT'"

# ---------------------------------------------------------------- corpus, binary
ensure_corpus "${LAYERS[@]}"
CS=$(chunkstore_bin)
TARS=()
BYTES=0
for l in "${LAYERS[@]}"; do
  TARS+=("$CORPUS/$l.tar")
  BYTES=$((BYTES + $(stat -c %s "$CORPUS/$l.tar")))
done

# ---------------------------------------------------------------- S3 server
STORE_ROOT=${STORE_ROOT:-$(mktemp -d /var/tmp/cs-s3bench.XXXXXX)}
mkdir -p "$STORE_ROOT"
RGW_DIR=
cleanup() {
  [[ -n $RGW_DIR ]] && "$REPO/.ci/ceph-rgw-down" "$RGW_DIR"
  rm -rf "$STORE_ROOT"
}
trap cleanup EXIT
if [[ -z ${CHUNKSTORE_S3_ENDPOINT:-} || -z ${AWS_ACCESS_KEY_ID:-} ]]; then
  RGW_DIR=$(mktemp -d /tmp/cs-s3bench-rgw.XXXXXX)
  say "starting Ceph RGW (in memory) with .ci/ceph-rgw-up"
  CEPH_MEMSTORE_BYTES=${CEPH_MEMSTORE_BYTES:-8589934592} "$REPO/.ci/ceph-rgw-up" "$RGW_DIR" auto >&2
  # shellcheck disable=SC1091
  . "$RGW_DIR/env"
fi
BUCKET=cs-bench
"$REPO/.ci/s3-bucket" "$CHUNKSTORE_S3_ENDPOINT" "$BUCKET"

# ---------------------------------------------------------------- runs
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ids=()
declare -A ING EXP
for kind in local s3; do ING[$kind]=""; EXP[$kind]=""; done

run_one() { # kind run
  local kind=$1 r=$2 args
  if [[ $kind == local ]]; then
    args=(--store "$STORE_ROOT/local-$r")
  else
    args=(--store "s3://$BUCKET/run-$$-$r?endpoint=$CHUNKSTORE_S3_ENDPOINT" --cache-dir "$STORE_ROOT/s3-index-$r")
  fi
  sync
  [[ -w /proc/sys/vm/drop_caches ]] && echo 3 >/proc/sys/vm/drop_caches
  cat "${TARS[@]}" >/dev/null
  local t0 t1 t2
  t0=$(now)
  "$CS" "${args[@]}" --json ingest "${TARS[@]}" >"$STORE_ROOT/ingest-$kind-$r.json"
  t1=$(now)
  mapfile -t ids < <(python3 -c 'import json,sys; [print(x["id"]) for x in json.load(open(sys.argv[1]))]' "$STORE_ROOT/ingest-$kind-$r.json")
  for id in "${ids[@]}"; do "$CS" "${args[@]}" export "$id" -o - >/dev/null; done
  t2=$(now)
  ING[$kind]+="$(calc "$t1 - $t0") "
  EXP[$kind]+="$(calc "$t2 - $t1") "
  say "$kind run $r: ingest $(calc "$t1 - $t0") s, export $(calc "$t2 - $t1") s"
}

# Warm-up (not timed): a fresh gateway creates its data pool on the first
# write, which costs seconds once.
"$CS" --store "s3://$BUCKET/warmup-$$?endpoint=$CHUNKSTORE_S3_ENDPOINT" --cache-dir "$STORE_ROOT/warmup-index" \
  ingest "$CORPUS/${LAYERS[2]}.tar" >/dev/null

for r in $(seq "$REPEAT"); do
  run_one local "$r"
  run_one s3 "$r"
  rm -rf "$STORE_ROOT/local-$r"
done

report() {
  local li ls le se
  li=$(tr ' ' '\n' <<<"${ING[local]}" | grep . | median)
  ls=$(tr ' ' '\n' <<<"${ING[s3]}" | grep . | median)
  le=$(tr ' ' '\n' <<<"${EXP[local]}" | grep . | median)
  se=$(tr ' ' '\n' <<<"${EXP[s3]}" | grep . | median)
  mbs() { awk "BEGIN { printf \"%.1f\", $BYTES / $1 / 1000000 }"; }
  echo "corpus: ${#LAYERS[@]} layers, $BYTES bytes of tar; median of $REPEAT runs; $(nproc) cores"
  printf '%-8s %12s %12s %12s %12s\n' backend "ingest s" "ingest MB/s" "export s" "export MB/s"
  printf '%-8s %12.2f %12s %12.2f %12s\n' local "$li" "$(mbs "$li")" "$le" "$(mbs "$le")"
  printf '%-8s %12.2f %12s %12.2f %12s\n' s3 "$ls" "$(mbs "$ls")" "$se" "$(mbs "$se")"
  printf 'S3/local throughput: ingest %.2fx, export %.2fx\n' "$(calc "$li / $ls")" "$(calc "$le / $se")"
}
report | tee ${RESULTS:+"$RESULTS"}
