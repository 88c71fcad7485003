#!/usr/bin/env bash
# Pull benchmark: chunkstore hub -> edge over loopback and over an emulated
# WAN link, against casync pulling the same layer from an HTTP chunk store
# with the same held layers as seeds.
#
# 1. Loopback: a hub store ingests the corpus; `chunkstore serve` on
#    127.0.0.1; a fresh, empty edge store pulls `base` (128 MB) with
#    `--via chunks` and `--via dedup`. Reported: MB/s of rebuilt layer
#    (base.tar bytes / wall seconds of the pull command), median of LOOP_REPEAT.
# 2. WAN: two network namespaces (hub, edge) joined by a point-to-point link
#    on 10.200.0.0/30 that exists only inside them (no route to anything
#    else), WAN_DELAY_MS each way (50 ms round trip) at WAN_RATE_MBIT in each
#    direction, WAN_LIMIT packets of queue. `chunkstore serve` runs in the hub
#    namespace. For each scenario of $CORPUS/scenarios.txt
#    ("<name> <want> <held>..."), REPEAT times:
#      chunkstore: a fresh edge store that ingested the held layers (the hub
#        was told with `client hold` before `serve` started) runs
#        `chunkstore pull --via dedup` (the default) and, separately,
#        `--via chunks` inside the edge namespace;
#      casync: `casync make` of want.tar into an HTTP chunk store in the hub
#        namespace (served by Python's http.server speaking HTTP/1.1, so
#        casync keeps its connection alive); inside the edge namespace
#        `casync extract --store=http://HUB/castr http://HUB/idx/WANT.caibx
#        OUT --seed=HELD.tar...` (blob index, the held layers' .tar files as
#        seeds).
#    Time is the wall time of the command; bytes on the wire are the edge
#    interface's rx+tx byte counters (IP packets incl. headers, both ways)
#    read before and after. Every output is checked byte for byte against
#    want.tar (chunkstore: `export` after the timed pull).
#
# Link emulation: `tc qdisc ... netem delay D rate R limit L` on both ends of
# a veth pair when the kernel has sch_netem; otherwise (e.g. a kernel built
# without CONFIG_NET_SCH_NETEM and without modules) a small userspace
# emulator compiled from this script (linkemu, C) moves packets between a TUN
# device in each namespace with the same model: per direction, serialization
# at R (plus 14 bytes per packet, as Ethernet framing would cost), then D of
# propagation delay, at most L packets queued (drop-tail). LINK picks one.
#
# Usage: bench/pull-wan.sh [SCENARIO...]     (default: every scenario)
# Environment:
#   CORPUS=DIR          corpus directory (default /tmp/chunkstore-corpus; built if missing)
#   REPEAT=N            WAN runs per scenario and tool (default 3; medians reported)
#   LOOP_REPEAT=N       loopback runs per --via (default 3)
#   SKIP_LOOPBACK=1     skip part 1;  SKIP_WAN=1  skip part 2
#   WAN_DELAY_MS=25     one-way delay (the round trip is twice this)
#   WAN_RATE_MBIT=100   link rate, each direction
#   WAN_LIMIT=1000      queue limit in packets (BDP at 50 ms x 100 Mbit/s is ~420 packets)
#   LINK=auto|netem|userspace   link emulation (default auto: netem if the kernel has it)
#   CONCURRENCY=N BATCH=N       passed to `chunkstore pull` (defaults: the CLI's)
#   STORE_ROOT=DIR      where scratch stores go (default: a new dir under /var/tmp)
#   CASYNC_TMPDIR=DIR   TMPDIR for casync, where it builds its seed index (default: a new dir
#                       under /dev/shm if that is tmpfs, else under the scratch dir)
#   CHUNKSTORE_BIN=P    use this binary instead of building target/release/chunkstore
#   KEEP=1              keep the scratch dir (stores, logs, JSON)
#   RESULTS=FILE        also write the report to FILE
# Needs root (ip netns). Exit status: 0 if every output matched want.tar, 1
# otherwise. Targets are printed, not enforced (see docs/benchmarks.md).
set -euo pipefail

BENCH_NAME=pull-wan
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPEAT=${REPEAT:-3}
LOOP_REPEAT=${LOOP_REPEAT:-3}
SKIP_LOOPBACK=${SKIP_LOOPBACK:-0}
SKIP_WAN=${SKIP_WAN:-0}
WAN_DELAY_MS=${WAN_DELAY_MS:-25}
WAN_RATE_MBIT=${WAN_RATE_MBIT:-100}
WAN_LIMIT=${WAN_LIMIT:-1000}
LINK=${LINK:-auto}
KEEP=${KEEP:-0}
for v in REPEAT LOOP_REPEAT WAN_DELAY_MS WAN_RATE_MBIT WAN_LIMIT; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ $LINK =~ ^(auto|netem|userspace)$ ]] || die "LINK must be auto, netem or userspace, got '$LINK'"
PULL_OPTS=()
[[ -n ${CONCURRENCY:-} ]] && PULL_OPTS+=(--concurrency "$CONCURRENCY")
[[ -n ${BATCH:-} ]] && PULL_OPTS+=(--batch "$BATCH")

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, link emulation)"
# ---------------------------------------------------------------- tools
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v cmp >/dev/null 2>&1 || apt_install diffutils
[[ -x /usr/bin/time ]] || apt_install time
TIME=/usr/bin/time
command -v ip >/dev/null 2>&1 || apt_install iproute2
command -v tc >/dev/null 2>&1 || apt_install iproute2
if [[ $SKIP_WAN != 1 ]]; then command -v casync >/dev/null 2>&1 || apt_install casync; fi

# ---------------------------------------------------------------- corpus, binary
ensure_corpus base
BIN=$(chunkstore_bin)
REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
[[ -z $(git -C "$REPO" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null) ]] \
  || REV="$REV+uncommitted changes in src/Cargo"

# ---------------------------------------------------------------- scratch, cleanup
WORK=$(scratch_dir pull-wan)
# A private copy: colleagues rebuilding target/release mid-run must not swap
# the binary between runs.
SRC_BIN=$BIN
cp "$BIN" "$WORK/chunkstore"
BIN=$WORK/chunkstore
# Names are per run, so two runs (or a stale one) never collide.
NS_HUB=cs-hub-$$
NS_EDGE=cs-edge-$$
DEV_HUB=csh$$
DEV_EDGE=cse$$
HUB_IP=10.200.0.1
EDGE_IP=10.200.0.2
PIDS=()
CA_TMP=""

stop_pid() {  # stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  set +e
  local p ns
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  for ns in "$NS_EDGE" "$NS_HUB"; do
    [[ -e /run/netns/$ns ]] && ip netns del "$ns"
  done
  [[ -n ${CA_TMP:-} && $CA_TMP != "$WORK"/* ]] && rm -rf "$CA_TMP"
  if [[ $KEEP == 1 ]]; then say "kept scratch dir $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
CLK_TCK=$(getconf CLK_TCK)
# proc_cpu PID: user+system CPU seconds the process has used so far.
proc_cpu() { awk -v t="$CLK_TCK" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
cpu_of() { awk '{printf "%.2f", $1 + $2}' "$1"; }  # cpu_of FILE: /usr/bin/time -f '%U %S' output

# wait_line FILE REGEX PID: wait (30 s) until FILE has a line matching REGEX; print it.
wait_line() {
  local f=$1 re=$2 pid=$3 i line
  for ((i = 0; i < 300; i++)); do
    line=$(grep -m1 -E "$re" "$f" 2>/dev/null || true)
    if [[ -n $line ]]; then echo "$line"; return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# start_serve LOG NETNS|- ADDR: run `chunkstore serve` on the hub, set SERVE_PID and HUB_URL.
start_serve() {
  local log=$1 ns=$2 addr=$3 pre=()
  [[ $ns == - ]] || pre=(ip netns exec "$ns")
  "${pre[@]}" "$BIN" --store "$WORK/hub" serve --listen "$addr" > "$log.out" 2> "$log.err" &
  SERVE_PID=$!
  PIDS+=("$SERVE_PID")
  local line
  line=$(wait_line "$log.out" '^listening on ' "$SERVE_PID") \
    || { sed 's/^/    /' "$log.err" >&2; die "chunkstore serve did not start"; }
  HUB_URL=${line#listening on }
}
stop_serve() { stop_pid "$SERVE_PID"; }

# ---------------------------------------------------------------- scenarios
mapfile -t LINES < <(grep -Ev '^[[:space:]]*(#|$)' "$CORPUS/scenarios.txt")
WANTED=("$@")
SCEN=()
for line in "${LINES[@]}"; do
  read -r name _ <<< "$line"
  if (( ${#WANTED[@]} > 0 )); then
    hit=0; for w in "${WANTED[@]}"; do [[ $w == "$name" ]] && hit=1; done
    (( hit )) || continue
  fi
  SCEN+=("$line")
done
(( ${#SCEN[@]} > 0 )) || [[ $SKIP_WAN == 1 ]] || die "no scenario matched: ${WANTED[*]}"

# ---------------------------------------------------------------- hub
# Every layer the runs need, from the .tar.gz a registry would hold.
mapfile -t LAYERS < <( { echo base; for line in "${SCEN[@]}"; do echo "$line" | tr ' ' '\n' | tail -n +2; done; } \
  | awk 'NF && !seen[$0]++')
say "hub ingests ${LAYERS[*]}"
gz=(); for l in "${LAYERS[@]}"; do gz+=("$CORPUS/$l.tar.gz"); done
cs "$WORK/hub" --json ingest "${gz[@]}" > "$WORK/hub-ingest.json"
declare -A ID
for ((i = 0; i < ${#LAYERS[@]}; i++)); do
  ID[${LAYERS[$i]}]=$(json_get "$WORK/hub-ingest.json" "j[$i][\"id\"]")
done
tar_size() { stat -c %s "$CORPUS/$1.tar"; }

# Clients and tokens, all made before `serve` (it holds the store open).
# One client per run, so every run starts from the same possession map.
declare -A TOKEN
new_client() {  # new_client NAME HELD_LAYER...
  local c=$1; shift
  cs "$WORK/hub" --json client add "$c" > /dev/null
  if (( $# > 0 )); then
    local ids=() h
    for h in "$@"; do ids+=("${ID[$h]}"); done
    cs "$WORK/hub" --json client hold "$c" "${ids[@]}" > /dev/null
  fi
  TOKEN[$c]=$(cs "$WORK/hub" token issue --client "$c" --scope pull --ttl 7d)
}
if [[ $SKIP_LOOPBACK != 1 ]]; then
  for via in chunks dedup; do
    for ((r = 1; r <= LOOP_REPEAT; r++)); do new_client "loop-$via-$r"; done
  done
fi
if [[ $SKIP_WAN != 1 ]]; then
  for line in "${SCEN[@]}"; do
    read -r name want held_list <<< "$line"
    read -r -a held <<< "$held_list"
    for via in dedup chunks; do
      for ((r = 1; r <= REPEAT; r++)); do new_client "wan-$name-$via-$r" "${held[@]}"; done
    done
  done
fi

FAILED=0
check_cs_export() {  # check_cs_export EDGE_STORE LAYER_NAME -> prints ok|MISMATCH
  cs "$1" export "${ID[$2]}" -o "$WORK/check.tar"
  if cmp -s "$WORK/check.tar" "$CORPUS/$2.tar"; then echo ok; else echo MISMATCH; fi
  rm -f "$WORK/check.tar"
}

# ---------------------------------------------------------------- 1. loopback
LOOP_ROWS=()
if [[ $SKIP_LOOPBACK != 1 ]]; then
  start_serve "$WORK/serve-loop" - 127.0.0.1:0
  say "loopback: hub at $HUB_URL; pulling base ($(tar_size base) bytes) into empty edge stores"
  LOAD_BEFORE=$(loadavg)
  for ((r = 1; r <= LOOP_REPEAT; r++)); do
    for via in chunks dedup; do
      edge=$WORK/edge-loop
      rm -rf "$edge"; sync
      c=loop-$via-$r
      h0=$(proc_cpu "$SERVE_PID")
      t0=$(now_ns)
      if ! CHUNKSTORE_TOKEN=${TOKEN[$c]} $TIME -f '%U %S' -o "$WORK/cpu" "$BIN" --store "$edge" --json pull \
           --hub "$HUB_URL" --client "$c" --via "$via" "${PULL_OPTS[@]}" "${ID[base]}" \
           > "$WORK/loop-$via-$r.json" 2> "$WORK/loop-$via-$r.err"; then
        sed 's/^/    /' "$WORK/loop-$via-$r.err" >&2; die "loopback pull --via $via failed"
      fi
      t1=$(now_ns)
      h1=$(proc_cpu "$SERVE_PID")
      ecpu=$(cpu_of "$WORK/cpu"); hcpu=$(awk -v a="$h0" -v b="$h1" 'BEGIN{printf "%.2f", b - a}')
      s=$(secs "$t0" "$t1")
      check=$(check_cs_export "$edge" base)
      [[ $check == ok ]] || { FAILED=1; say "loopback $via: export differs from base.tar"; }
      wire=$(json_get "$WORK/loop-$via-$r.json" 'j["wire_bytes"]')
      say "loopback $via run $r: $s s, $(awk -v b="$(tar_size base)" -v s="$s" 'BEGIN{printf "%.0f", b / 1e6 / s}') MB/s, $wire response bytes, CPU s edge $ecpu hub $hcpu, $check"
      LOOP_ROWS+=("$via $r $s $wire $check $ecpu $hcpu")
    done
  done
  LOAD_AFTER=$(loadavg)
  rm -rf "$WORK/edge-loop"
  stop_serve
fi

# ---------------------------------------------------------------- 2. WAN link
LINK_KIND=""
LINKEMU_PID=""
setup_link() {
  ip netns add "$NS_HUB"
  ip netns add "$NS_EDGE"
  ip -n "$NS_HUB" link set lo up
  ip -n "$NS_EDGE" link set lo up
  if [[ $LINK != userspace ]]; then
    ip link add "$DEV_HUB" type veth peer name "$DEV_EDGE"
    ip link set "$DEV_HUB" netns "$NS_HUB"
    ip link set "$DEV_EDGE" netns "$NS_EDGE"
    ip -n "$NS_HUB" addr add "$HUB_IP/30" dev "$DEV_HUB"
    ip -n "$NS_EDGE" addr add "$EDGE_IP/30" dev "$DEV_EDGE"
    ip -n "$NS_HUB" link set "$DEV_HUB" up
    ip -n "$NS_EDGE" link set "$DEV_EDGE" up
    if ip netns exec "$NS_HUB" tc qdisc add dev "$DEV_HUB" root netem \
         delay "${WAN_DELAY_MS}ms" rate "${WAN_RATE_MBIT}mbit" limit "$WAN_LIMIT" 2> "$WORK/tc.err" \
       && ip netns exec "$NS_EDGE" tc qdisc add dev "$DEV_EDGE" root netem \
         delay "${WAN_DELAY_MS}ms" rate "${WAN_RATE_MBIT}mbit" limit "$WAN_LIMIT" 2>> "$WORK/tc.err"; then
      LINK_KIND="veth pair, tc netem delay ${WAN_DELAY_MS}ms rate ${WAN_RATE_MBIT}mbit limit $WAN_LIMIT on both ends"
      return 0
    fi
    [[ $LINK == netem ]] && die "tc netem failed (LINK=netem): $(cat "$WORK/tc.err")"
    say "tc netem unavailable ($(head -1 "$WORK/tc.err")); using the userspace link emulator"
    ip -n "$NS_HUB" link del "$DEV_HUB"
  fi
  command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev
  [[ -c /dev/net/tun ]] || die "no /dev/net/tun for the userspace link emulator"
  write_linkemu > "$WORK/linkemu.c"
  cc -O2 -Wall -o "$WORK/linkemu" "$WORK/linkemu.c" || die "cannot compile the link emulator"
  ip -n "$NS_HUB" tuntap add dev "$DEV_HUB" mode tun
  ip -n "$NS_EDGE" tuntap add dev "$DEV_EDGE" mode tun
  ip -n "$NS_HUB" addr add "$HUB_IP/30" dev "$DEV_HUB"
  ip -n "$NS_EDGE" addr add "$EDGE_IP/30" dev "$DEV_EDGE"
  ip -n "$NS_HUB" link set "$DEV_HUB" mtu 1500 up
  ip -n "$NS_EDGE" link set "$DEV_EDGE" mtu 1500 up
  "$WORK/linkemu" "$NS_HUB" "$DEV_HUB" "$NS_EDGE" "$DEV_EDGE" \
    $((WAN_DELAY_MS * 1000)) $((WAN_RATE_MBIT * 1000000)) "$WAN_LIMIT" 14 \
    > "$WORK/linkemu.out" 2> "$WORK/linkemu.err" &
  LINKEMU_PID=$!
  PIDS+=("$LINKEMU_PID")
  wait_line "$WORK/linkemu.out" '^ready' "$LINKEMU_PID" > /dev/null \
    || die "link emulator did not start: $(cat "$WORK/linkemu.err")"
  LINK_KIND="TUN pair + userspace emulator (no sch_netem in this kernel): delay ${WAN_DELAY_MS}ms rate ${WAN_RATE_MBIT}mbit limit $WAN_LIMIT each way"
}

write_linkemu() {
  cat <<'EOF'
/* linkemu: userspace stand-in for `tc netem delay D rate R limit L` on a
 * point-to-point link between two network namespaces. Each end is a TUN
 * device (IFF_TUN|IFF_NO_PI, MTU 1500: no GSO super-packets) this process
 * attaches to inside its namespace. Per direction: a FIFO of at most LIMIT
 * packets; a packet of N bytes occupies the link for (N + OVERHEAD) * 8 /
 * RATE seconds after the previous one, then arrives DELAY later; arrivals
 * beyond LIMIT queued packets are dropped (netem's limit also counts packets
 * in the delay line).
 * usage: linkemu NS_A DEV_A NS_B DEV_B DELAY_US RATE_BPS LIMIT OVERHEAD */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define SLOT 2048

struct dir {
  int in, out;
  uint64_t *due;
  uint32_t *len;
  unsigned char *buf;
  size_t head, n;
  uint64_t link_free, pkts, bytes, drops;
};

static uint64_t limit, delay_ns, rate_bps, overhead;
static volatile sig_atomic_t stop;

static void die(const char *what) {
  perror(what);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int tun_in_ns(const char *ns, const char *dev) {
  char path[512];
  snprintf(path, sizeof path, "/run/netns/%s", ns);
  int nsfd = open(path, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) die(path);
  if (setns(nsfd, CLONE_NEWNET) < 0) die("setns");
  close(nsfd);
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK); /* binds to the current netns */
  if (fd < 0) die("/dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  strncpy(ifr.ifr_name, dev, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  return fd;
}

static void init_dir(struct dir *d, int in, int out) {
  memset(d, 0, sizeof *d);
  d->in = in;
  d->out = out;
  d->due = calloc(limit, sizeof *d->due);
  d->len = calloc(limit, sizeof *d->len);
  d->buf = malloc(limit * SLOT);
  if (!d->due || !d->len || !d->buf) die("malloc");
}

static void deliver(struct dir *d, uint64_t now) {
  while (d->n > 0 && d->due[d->head] <= now) {
    /* A full receive queue on the far side drops the packet, as a NIC would. */
    if (write(d->out, d->buf + d->head * SLOT, d->len[d->head]) < 0 && errno != EAGAIN) die("write");
    d->head = (d->head + 1) % limit;
    d->n--;
  }
}

static void receive(struct dir *d) {
  unsigned char tmp[65536];
  for (;;) {
    ssize_t r = read(d->in, tmp, sizeof tmp);
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      die("read");
    }
    if (d->n >= limit || r > SLOT) {
      d->drops++;
      continue;
    }
    uint64_t now = now_ns();
    uint64_t start = d->link_free > now ? d->link_free : now;
    d->link_free = start + ((uint64_t)r + overhead) * 8ull * 1000000000ull / rate_bps;
    size_t slot = (d->head + d->n) % limit;
    d->due[slot] = d->link_free + delay_ns;
    d->len[slot] = (uint32_t)r;
    memcpy(d->buf + slot * SLOT, tmp, (size_t)r);
    d->n++;
    d->pkts++;
    d->bytes += (uint64_t)r;
  }
}

static void on_term(int s) {
  (void)s;
  stop = 1;
}

int main(int argc, char **argv) {
  if (argc != 9) {
    fprintf(stderr, "usage: linkemu NS_A DEV_A NS_B DEV_B DELAY_US RATE_BPS LIMIT OVERHEAD\n");
    return 2;
  }
  delay_ns = strtoull(argv[5], NULL, 10) * 1000ull;
  rate_bps = strtoull(argv[6], NULL, 10);
  limit = strtoull(argv[7], NULL, 10);
  overhead = strtoull(argv[8], NULL, 10);
  if (!rate_bps || !limit) {
    fprintf(stderr, "linkemu: rate and limit must be positive\n");
    return 2;
  }
  int a = tun_in_ns(argv[1], argv[2]);
  int b = tun_in_ns(argv[3], argv[4]);
  struct dir d[2];
  init_dir(&d[0], a, b);
  init_dir(&d[1], b, a);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  printf("ready\n");
  fflush(stdout);
  while (!stop) {
    uint64_t now = now_ns();
    deliver(&d[0], now);
    deliver(&d[1], now);
    uint64_t next = UINT64_MAX;
    for (int i = 0; i < 2; i++)
      if (d[i].n > 0 && d[i].due[d[i].head] < next) next = d[i].due[d[i].head];
    struct timespec ts, *tp = NULL;
    if (next != UINT64_MAX) {
      uint64_t wait = next > now ? next - now : 0;
      ts.tv_sec = (time_t)(wait / 1000000000ull);
      ts.tv_nsec = (long)(wait % 1000000000ull);
      tp = &ts;
    }
    struct pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    if (ppoll(p, 2, tp, NULL) < 0) {
      if (errno == EINTR) continue;
      die("ppoll");
    }
    if (p[0].revents & POLLIN) receive(&d[0]);
    if (p[1].revents & POLLIN) receive(&d[1]);
  }
  fprintf(stderr, "linkemu: %s->%s %llu packets %llu bytes %llu dropped; %s->%s %llu packets %llu bytes %llu dropped\n",
          argv[2], argv[4], (unsigned long long)d[0].pkts, (unsigned long long)d[0].bytes,
          (unsigned long long)d[0].drops, argv[4], argv[2], (unsigned long long)d[1].pkts,
          (unsigned long long)d[1].bytes, (unsigned long long)d[1].drops);
  return 0;
}
EOF
}

# Bytes through the edge's interface so far, both directions.
edge_bytes() {
  ip netns exec "$NS_EDGE" sh -c "cat /sys/class/net/$DEV_EDGE/statistics/rx_bytes /sys/class/net/$DEV_EDGE/statistics/tx_bytes" \
    | paste -sd' '
}

WAN_ROWS=()
if [[ $SKIP_WAN != 1 ]]; then
  setup_link
  say "WAN link: $LINK_KIND"
  WAN_LOAD_BEFORE=$(loadavg)

  # casync's HTTP store: one chunk store holding every wanted layer's chunks,
  # one blob index per wanted layer, served from the hub namespace.
  CA=$WORK/casync-www
  # casync indexes its seeds at every extract into a directory of symlinks
  # under $TMPDIR (1,630 directories and symlinks for base.tar, removed
  # afterwards). On this machine's ext4 that churn got slower run after run
  # (1 s to 12 s for the same local extract), so it goes to tmpfs: casync's
  # best case, not a handicap.
  if [[ -n ${CASYNC_TMPDIR:-} ]]; then
    mkdir -p "$CASYNC_TMPDIR"; CA_TMP=$(mktemp -d "$CASYNC_TMPDIR/pull-wan-casync.XXXXXX")
  elif [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]]; then
    CA_TMP=$(mktemp -d /dev/shm/pull-wan-casync.XXXXXX)
  else
    CA_TMP=$WORK/casync-tmp; mkdir -p "$CA_TMP"
  fi
  mkdir -p "$CA/idx"
  declare -A CA_MADE
  for line in "${SCEN[@]}"; do
    read -r name want _ <<< "$line"
    [[ -n ${CA_MADE[$want]:-} ]] && continue
    say "casync make $want"
    ip netns exec "$NS_HUB" casync make --store="$CA/castr" "$CA/idx/$want.caibx" "$CORPUS/$want.tar" > /dev/null
    CA_MADE[$want]=1
  done
  cat > "$WORK/httpd.py" <<'EOF'
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"    # keep-alive: casync-http reuses its one connection
    disable_nagle_algorithm = True   # TCP_NODELAY, as nginx does on keep-alive connections: without it
                                     # the body waits for the ACK of the headers (~40% slower casync)
addr, root = sys.argv[1], sys.argv[2]
srv = http.server.ThreadingHTTPServer((addr, 0), functools.partial(Handler, directory=root))
print("port", srv.server_address[1], flush=True)
srv.serve_forever()
EOF
  ip netns exec "$NS_HUB" python3 "$WORK/httpd.py" "$HUB_IP" "$CA" > "$WORK/httpd.out" 2> "$WORK/httpd.log" &
  HTTPD_PID=$!
  PIDS+=("$HTTPD_PID")
  HTTPD_PORT=$(wait_line "$WORK/httpd.out" '^port ' "$HTTPD_PID" | cut -d' ' -f2) || die "http.server did not start"
  CA_URL=http://$HUB_IP:$HTTPD_PORT

  start_serve "$WORK/serve-wan" "$NS_HUB" "$HUB_IP:0"
  say "WAN: chunkstore hub at $HUB_URL, casync store at $CA_URL/castr"

  for line in "${SCEN[@]}"; do
    read -r name want held_list <<< "$line"
    read -r -a held <<< "$held_list"
    say "$name: want $want ($(tar_size "$want") bytes), edge holds ${held[*]}"
    edge0=$WORK/edge0-$name
    held_gz=(); for h in "${held[@]}"; do held_gz+=("$CORPUS/$h.tar.gz"); done
    cs "$edge0" --json ingest "${held_gz[@]}" > /dev/null
    seeds=(); for h in "${held[@]}"; do seeds+=("--seed=$CORPUS/$h.tar"); done

    for ((r = 1; r <= REPEAT; r++)); do
      # chunkstore, both ways of pulling
      for via in dedup chunks; do
        edge=$WORK/edge
        rm -rf "$edge"; cp -a "$edge0" "$edge"; sync
        c=wan-$name-$via-$r
        read -r rx0 tx0 <<< "$(edge_bytes)"
        h0=$(proc_cpu "$SERVE_PID")
        t0=$(now_ns)
        if ! CHUNKSTORE_TOKEN=${TOKEN[$c]} ip netns exec "$NS_EDGE" $TIME -f '%U %S' -o "$WORK/cpu" "$BIN" --store "$edge" --json pull \
             --hub "$HUB_URL" --client "$c" --via "$via" "${PULL_OPTS[@]}" "${ID[$want]}" \
             > "$WORK/$c.json" 2> "$WORK/$c.err"; then
          sed 's/^/    /' "$WORK/$c.err" >&2; die "$name: chunkstore pull --via $via failed"
        fi
        t1=$(now_ns)
        read -r rx1 tx1 <<< "$(edge_bytes)"
        h1=$(proc_cpu "$SERVE_PID")
        ecpu=$(cpu_of "$WORK/cpu"); hcpu=$(awk -v a="$h0" -v b="$h1" 'BEGIN{printf "%.2f", b - a}')
        check=$(check_cs_export "$edge" "$want")
        [[ $check == ok ]] || { FAILED=1; say "$name: chunkstore ($via) export differs from $want.tar"; }
        body=$(json_get "$WORK/$c.json" 'j["wire_bytes"]')
        got_via=$(json_get "$WORK/$c.json" 'j["via"] + ("+fellback" if j["fell_back"] else "") + " (%d chunks fetched)" % j["fetched_chunks"]')
        s=$(secs "$t0" "$t1")
        say "  chunkstore $via run $r: $s s, wire $((rx1 - rx0 + tx1 - tx0)) bytes (rx $((rx1 - rx0)), tx $((tx1 - tx0))), bodies $body, via $got_via, CPU s edge $ecpu hub $hcpu, $check"
        WAN_ROWS+=("$name chunkstore-$via $r $s $((rx1 - rx0)) $((tx1 - tx0)) $body $check $ecpu $hcpu")
      done

      # casync
      out=$WORK/casync-out.tar
      rm -f "$out"; sync
      req0=$(grep -c '"GET ' "$WORK/httpd.log" || true)
      read -r rx0 tx0 <<< "$(edge_bytes)"
      h0=$(proc_cpu "$HTTPD_PID")
      t0=$(now_ns)
      if ! TMPDIR=$CA_TMP ip netns exec "$NS_EDGE" $TIME -f '%U %S' -o "$WORK/cpu" casync extract --store="$CA_URL/castr" "${seeds[@]}" \
           "$CA_URL/idx/$want.caibx" "$out" > "$WORK/casync.out" 2> "$WORK/casync.err"; then
        sed 's/^/    /' "$WORK/casync.err" >&2; die "$name: casync extract failed"
      fi
      t1=$(now_ns)
      read -r rx1 tx1 <<< "$(edge_bytes)"
      req1=$(grep -c '"GET ' "$WORK/httpd.log" || true)
      h1=$(proc_cpu "$HTTPD_PID")
      ecpu=$(cpu_of "$WORK/cpu"); hcpu=$(awk -v a="$h0" -v b="$h1" 'BEGIN{printf "%.2f", b - a}')
      if cmp -s "$out" "$CORPUS/$want.tar"; then check=ok; else check=MISMATCH; FAILED=1; say "$name: casync output differs"; fi
      rm -f "$out"
      s=$(secs "$t0" "$t1")
      say "  casync run $r: $s s, wire $((rx1 - rx0 + tx1 - tx0)) bytes (rx $((rx1 - rx0)), tx $((tx1 - tx0))), $((req1 - req0)) GETs, CPU s casync $ecpu http.server $hcpu, $check"
      WAN_ROWS+=("$name casync $r $s $((rx1 - rx0)) $((tx1 - tx0)) $((req1 - req0)) $check $ecpu $hcpu")

      # casync with the store on local disk: its time without the network.
      rm -f "$out"; sync
      t0=$(now_ns)
      TMPDIR=$CA_TMP $TIME -f '%U %S' -o "$WORK/cpu" casync extract --store="$CA/castr" "${seeds[@]}" "$CA/idx/$want.caibx" "$out" \
        > /dev/null 2> "$WORK/casync.err" || { sed 's/^/    /' "$WORK/casync.err" >&2; die "$name: local casync extract failed"; }
      t1=$(now_ns)
      if cmp -s "$out" "$CORPUS/$want.tar"; then check=ok; else check=MISMATCH; FAILED=1; say "$name: local casync output differs"; fi
      rm -f "$out"
      say "  casync (local store) run $r: $(secs "$t0" "$t1") s, CPU s $(cpu_of "$WORK/cpu"), $check"
      WAN_ROWS+=("$name casync-local $r $(secs "$t0" "$t1") 0 0 0 $check $(cpu_of "$WORK/cpu") 0")
    done
    [[ $KEEP == 1 ]] || rm -rf "$edge0" "$WORK/edge"
  done
  WAN_LOAD_AFTER=$(loadavg)
  stop_serve
  if [[ -n $LINKEMU_PID ]]; then stop_pid "$LINKEMU_PID"; fi
fi

# ---------------------------------------------------------------- report
# WAN_ROWS: name tool rep seconds rx tx extra check client_cpu server_cpu
#   (extra: response body bytes for chunkstore, GETs for casync)
# med SCENARIO TOOL FIELD: median over runs of a field (0-based) or of "wire" (rx + tx).
med() {
  local r f
  for r in "${WAN_ROWS[@]}"; do
    read -r -a f <<< "$r"
    [[ ${f[0]} == "$1" && ${f[1]} == "$2" ]] || continue
    if [[ $3 == wire ]]; then echo $((f[4] + f[5])); else echo "${f[$3]}"; fi
  done | median
}
checks() {
  local r f out=ok
  for r in "${WAN_ROWS[@]}"; do
    read -r -a f <<< "$r"
    [[ ${f[0]} == "$1" && ${f[1]} == "$2" && ${f[7]} != ok ]] && out=MISMATCH
  done
  echo "$out"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a / b}'; }

report() {
  echo "pull-wan  ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, chunkstore $REV, $(casync --version 2>/dev/null | head -1))"
  echo "binary: $SRC_BIN (run from a private copy); corpus: $CORPUS"
  if [[ $SKIP_LOOPBACK != 1 ]]; then
    echo
    echo "loopback: an empty edge store pulls base ($(tar_size base) bytes of tar) from a hub on 127.0.0.1;"
    echo "load average before $LOAD_BEFORE, after $LOAD_AFTER; LOOP_REPEAT=$LOOP_REPEAT; ${PULL_OPTS[*]:-default pull options}"
    printf '%-7s %-22s %9s %7s %14s %9s %8s %13s %6s\n' \
      via seconds_per_run median_s MB/s response_bytes edge_cpu hub_cpu cpu_bound_MB/s check
    local via rs es hs r f ws chk m e h
    for via in chunks dedup; do
      rs=(); es=(); hs=(); ws=""; chk=ok
      for r in "${LOOP_ROWS[@]}"; do
        read -r -a f <<< "$r"
        [[ ${f[0]} == "$via" ]] || continue
        rs+=("${f[2]}"); ws=${f[3]}; [[ ${f[4]} == ok ]] || chk=MISMATCH; es+=("${f[5]}"); hs+=("${f[6]}")
      done
      m=$(printf '%s\n' "${rs[@]}" | median)
      e=$(printf '%s\n' "${es[@]}" | median)
      h=$(printf '%s\n' "${hs[@]}" | median)
      printf '%-7s %-22s %9s %7.0f %14s %9s %8s %13.0f %6s\n' "$via" "$(IFS=,; echo "${rs[*]}")" "$m" \
        "$(awk -v b="$(tar_size base)" -v s="$m" 'BEGIN{print b / 1e6 / s}')" "$ws" "$e" "$h" \
        "$(awk -v b="$(tar_size base)" -v e="$e" -v h="$h" 'BEGIN{print b / 1e6 / ((e + h) / 2)}')" "$chk"
    done
    echo "MB = 10^6 bytes of rebuilt layer (base.tar) per second of wall time of \`chunkstore pull\`; target >= 300 MB/s."
    echo "edge_cpu, hub_cpu: median user+system CPU seconds of the pull and of the hub during it; cpu_bound_MB/s:"
    echo "what (edge_cpu + hub_cpu) / 2 cores would allow if both cores were free and perfectly shared."
  fi
  if [[ $SKIP_WAN != 1 ]]; then
    echo
    echo "WAN: $LINK_KIND; REPEAT=$REPEAT (medians);"
    echo "load average before $WAN_LOAD_BEFORE, after $WAN_LOAD_AFTER"
    echo "wire = bytes through the edge's interface, both directions ($( [[ -n $LINKEMU_PID ]] && echo 'IP packets incl. IP/TCP headers' || echo 'Ethernet frames'));"
    echo "casync: HTTP/1.1 keep-alive store (TCP_NODELAY), held layers' .tar as --seed, TMPDIR $CA_TMP;"
    echo "chunkstore: the edge store holds the held layers."
    printf '%-15s %-11s %8s %8s %7s %11s %11s %7s  %s\n' \
      scenario chunkstore cs_s casync_s t_ratio cs_wire casync_wire w_ratio "check / targets (t_ratio<=0.5, w_ratio<=0.5)"
    local line name cs_s ca_s cs_w ca_w tr wr verdict miss=0
    for line in "${SCEN[@]}"; do
      read -r name _ <<< "$line"
      ca_s=$(med "$name" casync 3); ca_w=$(med "$name" casync wire)
      for via in dedup chunks; do
        cs_s=$(med "$name" "chunkstore-$via" 3); cs_w=$(med "$name" "chunkstore-$via" wire)
        tr=$(ratio "$cs_s" "$ca_s"); wr=$(ratio "$cs_w" "$ca_w")
        verdict="$(checks "$name" "chunkstore-$via")/$(checks "$name" casync)"
        if awk -v t="$tr" -v w="$wr" 'BEGIN{exit !(t <= 0.5 && w <= 0.5)}'; then
          verdict="$verdict met"
        else
          verdict="$verdict MISSED ($(awk -v t="$tr" -v w="$wr" 'BEGIN{s = ""; if (t > 0.5) s = "time"; if (w > 0.5) s = s (s == "" ? "" : ", ") "wire"; print s}'))"
          [[ $via == dedup ]] && miss=1
        fi
        printf '%-15s %-11s %8s %8s %7s %11s %11s %7s  %s\n' "$name" "via $via" "$cs_s" "$ca_s" "$tr" "$cs_w" "$ca_w" "$wr" "$verdict"
      done
    done
    if (( miss )); then echo "targets: MISSED for at least one scenario via dedup (the default)"; else echo "targets: met for every scenario via dedup (the default)"; fi
    echo
    echo "where the time goes (medians): client = the pulling command, server = chunkstore serve / http.server;"
    echo "casync-local = casync extract with the same seeds from the store on local disk (no network)."
    printf '%-15s %-17s %8s %11s %11s %11s %14s\n' scenario tool wall_s client_cpu server_cpu wire_bytes "bodies/GETs"
    local tool
    for line in "${SCEN[@]}"; do
      read -r name _ <<< "$line"
      for tool in chunkstore-dedup chunkstore-chunks casync casync-local; do
        printf '%-15s %-17s %8s %11s %11s %11s %14s\n' "$name" "$tool" "$(med "$name" "$tool" 3)" \
          "$(med "$name" "$tool" 8)" "$(med "$name" "$tool" 9)" "$(med "$name" "$tool" wire)" "$(med "$name" "$tool" 6)"
      done
    done
    echo "bodies/GETs: response body bytes chunkstore counted (--json wire_bytes); HTTP GETs casync made (index + chunks)."
  fi
  if [[ -s $WORK/linkemu.err ]]; then echo "link emulator: $(cat "$WORK/linkemu.err")"; fi
}

if [[ -n ${RESULTS:-} ]]; then
  report | tee "$RESULTS"
else
  report
fi
exit $FAILED
