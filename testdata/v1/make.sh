#!/usr/bin/env bash
# How the v1 golden fixtures were made (see ../README.md). They are already
# made and append-only: this writes a fresh set into OUTDIR, never over v1.
# usage: CHUNKSTORE=path/to/chunkstore testdata/v1/make.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cs=${CHUNKSTORE:-chunkstore}
out=${1:?usage: make.sh OUTDIR}
mkdir -p "$out" && cd "$out"
[ ! -e store ] || { echo "make.sh: $out/store already exists" >&2; exit 1; }

python3 "$here/make_tars.py"
for t in old-layer layer; do zstd -19 -q -f "$t.tar" -o "$t.tar.zst"; done
old=sha256:$(sha256sum old-layer.tar | cut -c1-64)
new=sha256:$(sha256sum layer.tar | cut -c1-64)

# The hub: both layers, and a client (edge node) that holds the old one.
"$cs" --store store ingest old-layer.tar.zst layer.tar.zst
"$cs" --store store client add edge
"$cs" --store store client hold edge "$old"
"$cs" --store store diff --client edge "$new" --files
"$cs" --store store pack --client edge "$new" -o update.dtar

# The index is 3.6 MB of mostly free pages: keep it zstd-compressed.
zstd -19 -q --rm store/chunkstore.redb -o store/chunkstore.redb.zst
rmdir store/tmp
rm old-layer.tar layer.tar
echo "old layer $old"
echo "new layer $new"
