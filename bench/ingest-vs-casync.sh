#!/usr/bin/env bash
# Ingest benchmark: chunkstore vs casync on the public corpus.
#
# Ingests the corpus layers, in the order below, one call per layer, into ONE
# fresh store per tool (so dedup across layers counts), and prints per-layer
# wall seconds, total throughput, stored bytes and peak RSS.
#
# Usage: bench/ingest-vs-casync.sh
# Environment:
#   CORPUS=DIR        corpus directory (default /tmp/chunkstore-corpus; built if missing)
#   REPEAT=N          runs per tool, fresh stores each time; per-layer median is reported (default 3)
#   STORE_ROOT=DIR    where the scratch stores go (default: a new dir under /var/tmp, on disk)
#   CASYNC_ONLY=1     skip building and running chunkstore
#   CHUNKSTORE_BIN=P  use this binary instead of building target/release/chunkstore
#   KEEP=1            keep the scratch stores, indexes and chunkstore JSON output
#   RESULTS=FILE      also write the report to FILE
#   BIG_GIB=N         after the corpus runs, stream a generated N GiB layer into a
#                     fresh chunkstore store from stdin (`ingest -`) and report its
#                     peak RSS: memory must not grow with the layer (default 2; 0 skips)
#
# Timing hygiene: before each tool's run the script syncs and (as root) drops
# the page/dentry/inode caches, then re-reads the corpus and both tools'
# binaries into the page cache.
# On this machine's ext4, creating many files soon after deleting many (e.g. a
# previous run's store) is otherwise 1.5-3x slower in a way that grows run to
# run; dropping caches removes that, and both tools read the corpus warm.
# MB = 10^6 bytes; throughput is of the uncompressed .tar bytes.
set -euo pipefail

BENCH_NAME=ingest-vs-casync
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LAYERS=(base base2 certs prettier-3.0.3 prettier-3.1.1 prettier-3.2.5 prettier-3.3.3)
REPEAT=${REPEAT:-3}
CASYNC_ONLY=${CASYNC_ONLY:-0}
KEEP=${KEEP:-0}
BIG_GIB=${BIG_GIB:-2}
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, got '$REPEAT'"
[[ $BIG_GIB =~ ^[0-9]+$ ]] || die "BIG_GIB must be a whole number of GiB, got '$BIG_GIB'"

# ---------------------------------------------------------------- tools
[[ -x /usr/bin/time ]] || apt_install time
command -v casync >/dev/null 2>&1 || apt_install casync
command -v python3 >/dev/null 2>&1 || apt_install python3
TIME=/usr/bin/time

# ---------------------------------------------------------------- corpus, binary
ensure_corpus "${LAYERS[@]}"
BIN=""
[[ $CASYNC_ONLY == 1 ]] || BIN=$(chunkstore_bin)

# ---------------------------------------------------------------- scratch
WORK=$(scratch_dir ingest-bench)
cleanup() {
  if [[ $KEEP == 1 ]]; then say "kept scratch dir $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

settle() {
  sync
  if [[ $IS_ROOT -eq 1 && -w /proc/sys/vm/drop_caches ]]; then
    echo 3 > /proc/sys/vm/drop_caches
  fi
  cat "$CORPUS"/*.tar "$CORPUS"/*.tar.gz "$(command -v casync)" ${BIN:+"$BIN"} > /dev/null
}
[[ $IS_ROOT -eq 1 ]] || say "warning: not root, cannot drop caches; timings may be noisy"

# run_timed RESFILE STDOUT STDERR CMD...: appends "secs maxrss_kib" to RESFILE
run_timed() {
  local res=$1 out=$2 err=$3; shift 3
  local tf=$WORK/time.out t0 t1
  # Wall time from the shell's clock: GNU time's %e rounds to 10 ms, a
  # quarter of a small layer's ingest. %M (peak RSS) still comes from time.
  t0=$(date +%s%N)
  if ! "$TIME" -f '%M' -o "$tf" -- "$@" > "$out" 2> "$err"; then
    say "command failed: $*"
    sed 's/^/    /' "$err" >&2
    [[ -s $tf ]] && sed 's/^/    /' "$tf" >&2
    die "aborting"
  fi
  t1=$(date +%s%N)
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", (b - a) / 1e9}') $(tail -n 1 "$tf")" >> "$res"
}

# ---------------------------------------------------------------- runs
# One run = all layers into one fresh store. Results per (tool, rep, layer) in
# $WORK/res/TOOL.LAYER (one "secs rss" line per rep) and store size in
# $WORK/res/TOOL.stored (last rep).
mkdir -p "$WORK/res"

run_casync() {
  local rep=$1 l
  local d=$WORK/casync.$rep
  mkdir -p "$d/idx"
  settle
  for l in "${LAYERS[@]}"; do
    run_timed "$WORK/res/casync.$l" /dev/null "$d/$l.err" \
      casync make --store="$d/store" "$d/idx/$l.caibx" "$CORPUS/$l.tar"
  done
  du -sb "$d/store" | cut -f1 > "$WORK/res/casync.stored"
}

# run_chunkstore TOOLNAME SUFFIX REP: SUFFIX is .tar or .tar.gz
run_chunkstore() {
  local tool=$1 sfx=$2 rep=$3 l
  local d=$WORK/$tool.$rep
  mkdir -p "$d/json"
  settle
  for l in "${LAYERS[@]}"; do
    run_timed "$WORK/res/$tool.$l" "$d/json/$l.json" "$d/$l.err" \
      "$BIN" --store "$d/store" ingest --json "$CORPUS/$l$sfx"
    # One summary per input: check it names the whole tar, keep its in-process seconds.
    python3 - "$d/json/$l.json" "$(stat -c %s "$CORPUS/$l.tar")" >> "$WORK/res/$tool.$l.json" <<'PY' \
      || die "chunkstore ingest --json output for $l$sfx is not what the script expects (see $d/json/$l.json)"
import json, sys
s = json.load(open(sys.argv[1]))
assert isinstance(s, list) and len(s) == 1, "want a JSON array of one summary"
s = s[0]
assert s["tar_size"] == int(sys.argv[2]), f"tar_size {s['tar_size']} is not the .tar's size {sys.argv[2]}"
print(s["seconds"], s["new_stored_bytes"], s["id"])
PY
  done
  du -sb "$d/store" | cut -f1 > "$WORK/res/$tool.stored"
}

TOOLS=(casync)
[[ $CASYNC_ONLY == 1 ]] || TOOLS+=(chunkstore chunkstore-gz)
for ((rep = 1; rep <= REPEAT; rep++)); do
  say "run $rep/$REPEAT: casync"
  run_casync "$rep"
  if [[ $CASYNC_ONLY != 1 ]]; then
    say "run $rep/$REPEAT: chunkstore (.tar)"
    run_chunkstore chunkstore .tar "$rep"
    say "run $rep/$REPEAT: chunkstore (.tar.gz)"
    run_chunkstore chunkstore-gz .tar.gz "$rep"
  fi
  # Free the space now; the next run's settle() drops the caches again.
  [[ $KEEP == 1 ]] || rm -rf "$WORK"/casync."$rep" "$WORK"/chunkstore."$rep" "$WORK"/chunkstore-gz."$rep"
done

# ---------------------------------------------------------------- large layer
# A generated layer streamed from stdin: peak RSS must stay bounded whatever
# the layer's size. Seeded, so every run streams the same bytes. Half its bytes
# are in files of 512 B - 256 KiB (log-uniform), a quarter in 1-8 MiB files, a
# quarter in 32-96 MiB files, which stream through the chunker (over its 8 MiB
# whole-file limit): about 12,000 files per GiB. Contents alternate random and
# text-like stretches (slices of one 5 MB text, so some chunks repeat).
gen_layer() {
  python3 - "$1" <<'PY'
import io, random, sys, tarfile
total = int(sys.argv[1]) << 30
rng = random.Random(20261124)
words = [b"fn", b"let", b"value", b"return", b"layer", b"chunk", b"{", b"}", b"\n", b"0x1f"]
text = b" ".join(rng.choice(words) for _ in range(1 << 20))
class Content(io.RawIOBase):
    """`size` bytes, made as they are read."""
    def __init__(self, size, seed):
        self.left, self.rng = size, random.Random(seed)
    def readable(self):
        return True
    def readinto(self, b):
        n = min(len(b), self.left, 1 << 20)
        if n > 0:
            if self.rng.random() < 0.5:
                b[:n] = self.rng.randbytes(n)
            else:
                o = self.rng.randrange(len(text) - n)
                b[:n] = text[o:o + n]
            self.left -= n
        return max(n, 0)
# (share of the bytes, size of one file)
kinds = [(0.50, lambda: int(2 ** rng.uniform(9, 18))),
         (0.25, lambda: rng.randrange(1 << 20, 8 << 20)),
         (0.25, lambda: rng.randrange(32 << 20, 96 << 20))]
have = [0] * len(kinds)
out = tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20)
done, i = 0, 0
while done < total:
    k = min(range(len(kinds)), key=lambda k: have[k] / kinds[k][0])
    size = min(kinds[k][1](), total - done)
    info = tarfile.TarInfo(f"data/d{i // 1000:04d}/f{i:07d}")
    info.size, info.mode, info.mtime = size, 0o644, 1700000000
    out.addfile(info, io.BufferedReader(Content(size, i), 1 << 20))
    done, i, have[k] = done + size, i + 1, have[k] + size
out.close()
print(f"{i} files", file=sys.stderr)
PY
}

BIG_RES=""
if [[ $CASYNC_ONLY != 1 && $BIG_GIB -gt 0 ]]; then
  say "large layer: $BIG_GIB GiB generated, streamed into chunkstore ingest -"
  settle
  d=$WORK/big
  mkdir -p "$d"
  if ! gen_layer "$BIG_GIB" 2> "$d/gen.err" \
      | "$TIME" -f '%e %M' -o "$d/time" -- "$BIN" --store "$d/store" ingest --json - > "$d/out.json" 2> "$d/err"; then
    sed 's/^/    /' "$d/gen.err" "$d/err" >&2
    die "large-layer ingest failed"
  fi
  read -r big_s big_kib < "$d/time"
  big_tar=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[0]["tar_size"])' "$d/out.json")
  BIG_RES="$big_tar $big_s $big_kib $(cat "$d/gen.err"), $(du -sb "$d/store" | cut -f1) bytes stored"
  [[ $KEEP == 1 ]] || rm -rf "$d/store"
fi

# ---------------------------------------------------------------- report
median_secs() { awk '{print $1}' "$1" | sort -g | awk '{a[NR]=$1} END {m=int((NR+1)/2); if (NR%2) print a[m]; else printf "%.4f\n", (a[m]+a[m+1])/2}'; }
max_rss()     { awk 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$1"; }

report() {
  local l t total_tar=0 total_gz=0
  declare -A sum rss
  for t in "${TOOLS[@]}"; do sum[$t]=0; rss[$t]=0; done

  echo "ingest-vs-casync  ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, REPEAT=$REPEAT, median seconds)"
  echo "casync: $(casync --version 2>&1 | head -n1) (deb $(dpkg-query -W -f '${Version}' casync 2>/dev/null || echo "?")), defaults (chunk 16K:64K:256K, zstd, sha512-256)"
  [[ -n $BIN ]] && echo "chunkstore: $BIN"
  echo
  if [[ $CASYNC_ONLY == 1 ]]; then
    printf '%-16s %10s %10s %12s\n' layer tar_MB casync_s casync_MiB
  else
    printf '%-16s %10s %10s %12s %14s %10s %14s\n' layer tar_MB casync_s chunkstore_s chunkstore_gz_s cs_MiB cs_gz_MiB
  fi
  for l in "${LAYERS[@]}"; do
    local sz gz; sz=$(stat -c %s "$CORPUS/$l.tar"); gz=$(stat -c %s "$CORPUS/$l.tar.gz")
    total_tar=$((total_tar + sz)); total_gz=$((total_gz + gz))
    declare -A med
    for t in "${TOOLS[@]}"; do
      med[$t]=$(median_secs "$WORK/res/$t.$l")
      sum[$t]=$(awk -v a="${sum[$t]}" -v b="${med[$t]}" 'BEGIN{printf "%.4f", a+b}')
      local r; r=$(max_rss "$WORK/res/$t.$l"); if (( r > rss[$t] )); then rss[$t]=$r; fi
    done
    if [[ $CASYNC_ONLY == 1 ]]; then
      printf '%-16s %10.2f %10.2f %12.1f\n' "$l" "$(awk -v s="$sz" 'BEGIN{print s/1e6}')" \
        "${med[casync]}" "$(awk -v k="$(max_rss "$WORK/res/casync.$l")" 'BEGIN{print k/1024}')"
    else
      printf '%-16s %10.2f %10.3f %12.3f %14.3f %10.1f %14.1f\n' "$l" "$(awk -v s="$sz" 'BEGIN{print s/1e6}')" \
        "${med[casync]}" "${med[chunkstore]}" "${med[chunkstore-gz]}" \
        "$(awk -v k="$(max_rss "$WORK/res/chunkstore.$l")" 'BEGIN{print k/1024}')" \
        "$(awk -v k="$(max_rss "$WORK/res/chunkstore-gz.$l")" 'BEGIN{print k/1024}')"
    fi
  done
  echo
  local cs_stored ca_stored; ca_stored=$(cat "$WORK/res/casync.stored")
  mbps() { awk -v b="$1" -v s="$2" 'BEGIN{ if (s > 0) printf "%.1f", b/1e6/s; else print "inf" }'; }
  printf 'total input: %.2f MB .tar (%.2f MB .tar.gz)\n' "$(awk -v s=$total_tar 'BEGIN{print s/1e6}')" "$(awk -v s=$total_gz 'BEGIN{print s/1e6}')"
  printf '%-24s %10s %10s %14s %14s\n' tool total_s MB/s stored_bytes peak_RSS_MiB
  for t in "${TOOLS[@]}"; do
    printf '%-24s %10.3f %10s %14s %14.1f\n' "$t" "${sum[$t]}" "$(mbps $total_tar "${sum[$t]}")" \
      "$(cat "$WORK/res/$t.stored")" "$(awk -v k="${rss[$t]}" 'BEGIN{print k/1024}')"
  done
  if [[ $CASYNC_ONLY != 1 ]]; then
    cs_stored=$(cat "$WORK/res/chunkstore.stored")
    echo
    printf 'throughput ratio chunkstore/casync (.tar):   %s\n' \
      "$(awk -v a="${sum[casync]}" -v b="${sum[chunkstore]}" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "inf" }')"
    printf 'stored-bytes ratio chunkstore/casync (.tar): %s\n' \
      "$(awk -v a="$cs_stored" -v b="$ca_stored" 'BEGIN{printf "%.3f", a/b}')"
    printf 'chunkstore peak RSS (.tar): %.1f MiB\n' "$(awk -v k="${rss[chunkstore]}" 'BEGIN{print k/1024}')"
    printf 'chunkstore from .tar.gz (casync cannot read gzip): %.2f s, %s MB/s of .tar bytes (%s MB/s of .tar.gz bytes), stored %s bytes, peak RSS %.1f MiB\n' \
      "${sum[chunkstore-gz]}" "$(mbps $total_tar "${sum[chunkstore-gz]}")" "$(mbps $total_gz "${sum[chunkstore-gz]}")" \
      "$(cat "$WORK/res/chunkstore-gz.stored")" "$(awk -v k="${rss[chunkstore-gz]}" 'BEGIN{print k/1024}')"
    # The summaries' own `seconds` (store open, process start and exit excluded).
    local inproc=0
    for l in "${LAYERS[@]}"; do
      inproc=$(awk -v a="$inproc" -v m="$(median_secs "$WORK/res/chunkstore.$l.json")" 'BEGIN{printf "%.3f", a+m}')
    done
    printf 'chunkstore in-process ingest seconds (JSON "seconds", median per layer, summed): %.3f s of the %.2f s\n' \
      "$inproc" "${sum[chunkstore]}"
  fi
  if [[ -n $BIG_RES ]]; then
    read -r bytes secs kib rest <<< "$BIG_RES"
    echo
    printf 'large layer (BIG_GIB=%s, generated, from stdin): %.2f GiB tar in %.1f s (%.0f MB/s, generator-bound or not), peak RSS %.1f MiB; %s\n' \
      "$BIG_GIB" "$(awk -v b="$bytes" 'BEGIN{print b/2^30}')" "$secs" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN{print b/1e6/s}')" \
      "$(awk -v k="$kib" 'BEGIN{print k/1024}')" "$rest"
  fi
}

if [[ -n ${RESULTS:-} ]]; then
  report | tee "$RESULTS"
else
  report
fi
