#!/usr/bin/env bash
# Dedup-tarball benchmark over the public corpus scenarios.
#
# For each line "<name> <want-layer> <held-layer>..." of $CORPUS/scenarios.txt:
#   hub:  a fresh store ingests want + held layers (.tar.gz, as a registry
#         holds them); `client add edge`; `client hold edge <held>...`;
#         `pack --client edge <want> -o FILE --json` (timed)
#   edge: a fresh store ingests the held layers; `apply FILE` (timed);
#         `export <want>` must equal want.tar byte for byte (cmp)
# and prints: scenario, dedup tarball bytes, want .tar.gz bytes, ratio (%),
# pack seconds, apply seconds (medians over REPEAT runs; each apply runs on a
# fresh copy of the edge store).
#
# Usage: bench/scenarios.sh [SCENARIO...]     (default: every scenario)
# Environment:
#   CORPUS=DIR        corpus directory (default /tmp/chunkstore-corpus; built if missing)
#   REPEAT=N          pack/apply runs per scenario; medians are reported (default 3)
#   STORE_ROOT=DIR    where scratch stores go (default: a new dir under /var/tmp, on disk)
#   CHUNKSTORE_BIN=P  use this binary instead of building target/release/chunkstore
#   KEEP=1            keep the scratch dir (stores, tarballs, JSON)
#   RESULTS=FILE      also write the report to FILE
# Exit status: 0 if every rebuilt layer matched; 1 otherwise. Targets are
# printed, not enforced (see docs/benchmarks.md).
set -euo pipefail

BENCH_NAME=scenarios
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPEAT=${REPEAT:-3}
KEEP=${KEEP:-0}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, got '$REPEAT'"

command -v python3 >/dev/null 2>&1 || apt_install python3
command -v cmp >/dev/null 2>&1 || apt_install diffutils

# Every layer any scenario names must be there as .tar and .tar.gz.
# shellcheck disable=SC2119  # no layers beyond the scenarios
ensure_corpus
BIN=$(chunkstore_bin)
WORK=$(scratch_dir scenarios)
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  if [[ $KEEP == 1 ]]; then say "kept scratch dir $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT




# ---------------------------------------------------------------- scenarios
mapfile -t LINES < <(grep -Ev '^[[:space:]]*(#|$)' "$CORPUS/scenarios.txt")
WANTED=("$@")
ROWS=()
FAILED=0

for line in "${LINES[@]}"; do
  read -r name want held_list <<< "$line"
  read -r -a held <<< "$held_list"
  if (( ${#WANTED[@]} > 0 )); then
    hit=0; for w in "${WANTED[@]}"; do [[ $w == "$name" ]] && hit=1; done
    (( hit )) || continue
  fi
  say "$name: want $want, edge holds ${held[*]}"
  d=$WORK/$name
  mkdir -p "$d"

  # Hub: every layer, from the .tar.gz a registry would hold.
  gz_args=("$CORPUS/$want.tar.gz")
  for h in "${held[@]}"; do gz_args+=("$CORPUS/$h.tar.gz"); done
  cs "$d/hub" --json ingest "${gz_args[@]}" > "$d/hub-ingest.json"
  want_id=$(json_get "$d/hub-ingest.json" 'j[0]["id"]')
  held_ids=()
  for ((i = 1; i <= ${#held[@]}; i++)); do held_ids+=("$(json_get "$d/hub-ingest.json" "j[$i][\"id\"]")"); done

  # Edge: only the held layers.
  held_gz=()
  for h in "${held[@]}"; do held_gz+=("$CORPUS/$h.tar.gz"); done
  cs "$d/edge0" --json ingest "${held_gz[@]}" > /dev/null
  cs "$d/hub" --json client add edge > /dev/null
  cs "$d/hub" --json client hold edge "${held_ids[@]}" > /dev/null

  pack_times=(); apply_times=()
  for ((rep = 1; rep <= REPEAT; rep++)); do
    rm -f "$d/dedup.tar.zst"
    t0=$(now_ns)
    cs "$d/hub" --json pack --client edge "$want_id" -o "$d/dedup.tar.zst" > "$d/pack.json"
    t1=$(now_ns)
    pack_times+=("$(secs "$t0" "$t1")")

    rm -rf "$d/edge"
    cp -a "$d/edge0" "$d/edge"
    sync
    t0=$(now_ns)
    cs "$d/edge" --json apply "$d/dedup.tar.zst" > "$d/apply.json"
    t1=$(now_ns)
    apply_times+=("$(secs "$t0" "$t1")")
  done

  # The edge must give back want.tar byte for byte.
  cs "$d/edge" export "$want_id" -o "$d/want.tar"
  if cmp -s "$d/want.tar" "$CORPUS/$want.tar"; then
    check=ok
  else
    check=MISMATCH; FAILED=1
    say "$name: edge export differs from $CORPUS/$want.tar"
  fi
  rm -f "$d/want.tar"

  dedup_bytes=$(stat -c %s "$d/dedup.tar.zst")
  reported=$(json_get "$d/pack.json" 'j["compressed_bytes"]')
  [[ $reported == "$dedup_bytes" ]] || say "warning: $name: pack reported $reported bytes, file has $dedup_bytes"
  stream_bytes=$(json_get "$d/pack.json" 'j["tar_bytes"]')
  gz_bytes=$(stat -c %s "$CORPUS/$want.tar.gz")
  tar_bytes=$(stat -c %s "$CORPUS/$want.tar")
  pack_s=$(printf '%s\n' "${pack_times[@]}" | median)
  apply_s=$(printf '%s\n' "${apply_times[@]}" | median)
  ROWS+=("$name $dedup_bytes $gz_bytes $pack_s $apply_s $stream_bytes $tar_bytes $check")
  # Free the space: stores of the big scenarios are a few hundred MB.
  [[ $KEEP == 1 ]] || rm -rf "$d/hub" "$d/edge0" "$d/edge"
done

(( ${#ROWS[@]} > 0 )) || die "no scenario matched: ${WANTED[*]}"

# ---------------------------------------------------------------- report
report() {
  echo "scenarios  ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, REPEAT=$REPEAT, median seconds, warm page cache)"
  echo "chunkstore: $BIN ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo "corpus: $CORPUS"
  echo
  printf '%-16s %12s %12s %8s %8s %8s %14s %12s %6s\n' \
    scenario dedup_bytes want_gz_bytes ratio_% pack_s apply_s dedup_stream want_tar check
  local r
  for r in "${ROWS[@]}"; do
    read -r name dedup gz pack apply stream tar check <<< "$r"
    printf '%-16s %12s %12s %8.2f %8s %8s %14s %12s %6s\n' "$name" "$dedup" "$gz" \
      "$(awk -v a="$dedup" -v b="$gz" 'BEGIN{print 100 * a / b}')" "$pack" "$apply" "$stream" "$tar" "$check"
  done
  echo
  echo "dedup_bytes: the zstd dedup tarball pack wrote; want_gz_bytes: the layer's .tar.gz (gzip -6 -n);"
  echo "dedup_stream: its uncompressed tar stream; want_tar: the layer's .tar; check: edge export cmp want.tar."
  echo "targets: rebuilt-base <= 1% of base2.tar.gz; no scenario larger than its .tar.gz"
  local over=0
  for r in "${ROWS[@]}"; do
    read -r name dedup gz _ <<< "$r"
    if (( dedup > gz )); then echo "  OVER TARGET: $name is larger than its .tar.gz"; over=1; fi
    if [[ $name == rebuilt-base ]] && awk -v a="$dedup" -v b="$gz" 'BEGIN{exit !(a > b / 100)}'; then
      echo "  OVER TARGET: rebuilt-base is above 1% of its .tar.gz"; over=1
    fi
  done
  (( over )) || echo "  all met"
}

if [[ -n ${RESULTS:-} ]]; then
  report | tee "$RESULTS"
else
  report
fi
exit $FAILED
