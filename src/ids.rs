//! Newtypes for every identity that crosses a module boundary.

use crate::error::{Error, Result};
use std::fmt;

macro_rules! hash_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wrap raw digest bytes.
            pub const fn from_bytes(b: [u8; 32]) -> Self {
                $name(b)
            }
            /// The raw digest bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lower-case hex with the algorithm prefix.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// Parse `PREFIX:hex` or bare hex.
            pub fn parse(s: &str) -> Result<Self> {
                let h = s.strip_prefix(concat!($prefix, ":")).unwrap_or(s);
                let mut b = [0u8; 32];
                hex::decode_to_slice(h, &mut b).map_err(|_| {
                    Error::invalid(format!("not a {} digest: {s:?}", $prefix))
                })?;
                Ok($name(b))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ":{}"), self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

hash_id!(
    /// BLAKE3-256 of a chunk's raw bytes.
    ChunkId, "blake3"
);
hash_id!(
    /// BLAKE3-256 of a whole regular file's content; equals the ChunkId of a one-chunk file.
    FileId, "blake3"
);
hash_id!(
    /// OCI diff_id: SHA-256 of the uncompressed layer tar.
    LayerId, "sha256"
);
hash_id!(
    /// SHA-256 of a layer blob as it arrived (compressed).
    BlobDigest, "sha256"
);

impl ChunkId {
    /// Hash raw chunk bytes.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

impl FileId {
    /// Hash a whole file's bytes.
    pub fn of(data: &[u8]) -> Self {
        FileId(*blake3::hash(data).as_bytes())
    }
    /// A one-chunk file's id is its chunk's id.
    pub fn from_chunk(c: ChunkId) -> Self {
        FileId(c.0)
    }
    /// The chunk id equal to this file id (for one-chunk files).
    pub fn as_chunk(&self) -> ChunkId {
        ChunkId(self.0)
    }
}

/// A client (edge node) name: `[a-z0-9][a-z0-9._-]{0,63}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize)]
#[serde(transparent)]
pub struct ClientId(String);

impl ClientId {
    /// Validate a client name.
    pub fn new(name: &str) -> Result<Self> {
        let b = name.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
        if ok {
            Ok(ClientId(name.to_string()))
        } else {
            Err(Error::invalid(format!(
                "invalid client name {name:?}: use 1-64 of [a-z0-9._-], starting with a letter or digit"
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ClientId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ClientId::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ClientId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pack file's number within one store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize)]
pub struct PackId(pub u64);

impl PackId {
    /// The pack's file name, `<16 hex digits>.pack`.
    pub fn file_name(&self) -> String {
        format!("{:016x}.pack", self.0)
    }
    /// Parse a file name made by [`PackId::file_name`].
    pub fn from_file_name(name: &str) -> Option<Self> {
        let h = name.strip_suffix(".pack")?;
        if h.len() != 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok().map(PackId)
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip() {
        let l = LayerId::from_bytes([0xab; 32]);
        assert_eq!(LayerId::parse(&l.to_string()).unwrap(), l);
        assert_eq!(LayerId::parse(&l.to_hex()).unwrap(), l);
        assert!(LayerId::parse("sha256:zz").is_err());
        assert_eq!(PackId::from_file_name(&PackId(77).file_name()), Some(PackId(77)));
        assert_eq!(PackId::from_file_name("x.pack"), None);
    }

    #[test]
    fn client_names() {
        for ok in ["edge-3", "a", "0.x_y-z", &"a".repeat(64)] {
            assert!(ClientId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Edge", "-a", ".a", "a/b", "a b", &"a".repeat(65), "é"] {
            assert!(ClientId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_chunk_file_id_is_chunk_id() {
        let d = b"hello";
        assert_eq!(FileId::of(d).as_chunk(), ChunkId::of(d));
    }
}
