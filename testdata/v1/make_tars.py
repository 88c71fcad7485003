"""Writes old-layer.tar and layer.tar for the v1 golden fixtures (see ../README.md).

Deterministic: fixed seed, mtimes, owners and modes, so the tars can be made
again byte for byte. Run from this directory: python3 make_tars.py
"""

import io
import random
import tarfile

R = random.Random(20240501)
WORDS = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "kilo", "lima"]
MTIME = 1_700_000_000
LONG_DOC = "usr/share/doc/" + "a-rather-long-directory-name-that-only-a-gnu-long-name-record-or-a-pax-path-record-can-hold" + "/NOTICE"
LONG_OPT = "opt/" + "another-directory-whose-name-is-long-enough-that-ustar-name-and-prefix-fields" + "-cannot-hold-it/archive.dat"


def words(n_bytes):
    """Compressible pseudo-random text: lines of eight words from a small vocabulary."""
    out, n = [], 0
    while n < n_bytes:
        line = " ".join(R.choice(WORDS) for _ in range(8)) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()


def config(values):
    return "".join(f"key_{i:03d} = value-{v}\n" for i, v in enumerate(values)).encode()


def info(name, kind=tarfile.REGTYPE, size=0, mode=0o644, **kw):
    t = tarfile.TarInfo(name)
    t.type, t.size, t.mode, t.mtime = kind, size, mode, MTIME
    t.uid = t.gid = 0
    t.uname = t.gname = "root"
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def add(tf, name, data=None, kind=tarfile.REGTYPE, mode=0o644, **kw):
    if data is None:
        tf.addfile(info(name, kind, 0, mode, **kw))
    else:
        tf.addfile(info(name, kind, len(data), mode, **kw), io.BytesIO(data))


WORDS_TXT = words(300_000)  # five chunks at the default chunker sizes
TOOL = bytes(R.getrandbits(8) for _ in range(2048))  # incompressible: a raw pack entry
NOTICE = b"This fixture is part of chunkstore's golden tests.\n" * 8
CONF_VALUES = [R.randrange(1_000_000) for _ in range(160)]
NEW_CONF_VALUES = list(CONF_VALUES)
for i in (7, 70, 140):
    NEW_CONF_VALUES[i] += 1
NEW_CONF_VALUES += [1, 2]

with tarfile.open("old-layer.tar", "w", format=tarfile.GNU_FORMAT) as tf:
    add(tf, "etc/", kind=tarfile.DIRTYPE, mode=0o755)
    add(tf, "etc/app.conf", config(CONF_VALUES))
    add(tf, "usr/", kind=tarfile.DIRTYPE, mode=0o755)
    add(tf, "usr/bin/", kind=tarfile.DIRTYPE, mode=0o755)
    add(tf, "usr/bin/tool", TOOL, mode=0o755)
    add(tf, "usr/bin/tool-link", kind=tarfile.SYMTYPE, mode=0o777, linkname="tool")
    add(tf, "usr/share/app/words.txt", WORDS_TXT)
    add(tf, LONG_DOC, NOTICE)  # GNU long name ('L')

with tarfile.open(
    "layer.tar", "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "chunkstore golden fixture v1"}
) as tf:  # a global PAX header ('g') first
    add(tf, "etc/", kind=tarfile.DIRTYPE, mode=0o755)
    add(tf, "etc/app.conf", config(NEW_CONF_VALUES))  # changed: a delta against the old one
    add(tf, "usr/", kind=tarfile.DIRTYPE, mode=0o755)
    add(tf, "usr/bin/", kind=tarfile.DIRTYPE, mode=0o755)
    add(tf, "usr/bin/tool", TOOL, mode=0o755)  # held: a reference
    add(tf, "usr/bin/tool-hardlink", kind=tarfile.LNKTYPE, linkname="usr/bin/tool")
    add(tf, "usr/bin/tool-link", kind=tarfile.SYMTYPE, mode=0o777, linkname="tool")
    add(tf, "usr/share/app/words.txt", WORDS_TXT)  # held, five chunks: a reference
    add(tf, LONG_DOC, NOTICE)  # PAX path record
    add(tf, LONG_OPT, WORDS_TXT + words(20_000))  # shares four chunks: a chunk list
    add(tf, "new/README.md", b"# New in this layer\n\n" + words(1500), pax_headers={"comment": "a PAX record chunkstore ignores"})
    add(tf, "var/empty", b"")  # an empty file
    add(tf, "var/dumpdir", b"Yfile-a\0Nfile-b\0\0", kind=b"D")  # GNU dumpdir: data that is not a file
