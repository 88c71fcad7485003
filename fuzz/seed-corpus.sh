#!/usr/bin/env bash
# Write a small, varied seed corpus to corpus/ingest (gitignored): tars from
# GNU tar and Python in several formats, plain, gzip and zstd.
set -euo pipefail
cd "$(dirname "$0")"
out="$PWD/corpus/ingest"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

src="$work/src"
mkdir -p "$src/dir/sub"
printf 'hello\n' >"$src/dir/hello.txt"
: >"$src/dir/empty"
head -c 3000 /dev/urandom >"$src/dir/sub/random.bin"
(yes 'line of text' || true) | head -c 5000 >"$src/dir/sub/text.txt"
ln -s hello.txt "$src/dir/link"
ln "$src/dir/hello.txt" "$src/dir/hardlink"
long=$(printf 'n%.0s' $(seq 1 120))
printf 'long\n' >"$src/dir/$long"
truncate -s 20000 "$src/dir/sparse"
printf 'data' | dd of="$src/dir/sparse" bs=1 seek=10000 conv=notrunc status=none

for fmt in gnu ustar pax v7 oldgnu; do
  tar -b 1 --format=$fmt -cf "$out/$fmt.tar" -C "$src" dir 2>/dev/null || true
done
tar -b 1 --format=gnu --sparse -cf "$out/gnu-sparse.tar" -C "$src" dir/sparse
tar -b 1 --format=pax --sparse -cf "$out/pax-sparse.tar" -C "$src" dir/sparse
tar --format=gnu -cf "$out/one-file.tar" -C "$src" dir/hello.txt
gzip -9 -c "$out/gnu.tar" >"$out/gnu.tar.gz"
zstd -q -19 -c "$out/pax.tar" >"$out/pax.tar.zst"
gzip -c "$out/one-file.tar" >"$work/one.gz"
cat "$work/one.gz" "$work/one.gz" >"$out/two-members.tar.gz"
python3 - "$src" "$out" <<'PY'
import io, sys, tarfile
src, out = sys.argv[1], sys.argv[2]
for name, fmt in [("py-pax", tarfile.PAX_FORMAT), ("py-gnu", tarfile.GNU_FORMAT)]:
    with tarfile.open(f"{out}/{name}.tar", "w", format=fmt) as t:
        t.add(f"{src}/dir", arcname="dir")
        info = tarfile.TarInfo("x" * 150 + "/ünïcødé")
        data = b"pax path and size\n"
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
# Only the end-of-archive marker, and a tar with junk after it.
open(f"{out}/empty.tar", "wb").write(b"\0" * 1024)
one = open(f"{out}/one-file.tar", "rb").read()
open(f"{out}/trailing.tar", "wb").write(one + b"trailing junk")
PY
ls -l "$out"

# Seeds for the apply target: the golden dedup tarball's inner tar stream
# (the target compresses its input) and the tarball itself.
mkdir -p corpus/apply
zstd -q -d -c ../testdata/v1/update.dtar >corpus/apply/update.tar
cp ../testdata/v1/update.dtar corpus/apply/update.dtar
