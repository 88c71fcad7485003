//! chunkstore: a content-addressed chunk store and dedup engine for container
//! image layers.
//!
//! A [`Store`] ingests layer tarballs (plain, gzip or zstd), splits each
//! regular file into content-defined chunks (FastCDC), names everything by
//! BLAKE3, stores each distinct chunk once (zstd-compressed, in append-only
//! packs) and gives every layer back byte for byte.
//!
//! ```
//! use chunkstore::{IngestOptions, Store};
//! # fn main() -> chunkstore::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path())?;
//! // A one-file tar built in memory; real callers pass a file or a stream.
//! let mut b = tar::Builder::new(Vec::new());
//! let mut h = tar::Header::new_ustar();
//! h.set_size(5);
//! h.set_cksum();
//! b.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
//! let tar = b.into_inner().unwrap();
//!
//! let summary = store.ingest(&tar[..], &IngestOptions::default())?;
//! let mut back = Vec::new();
//! store.export(&summary.layer.id, &mut back)?;
//! assert_eq!(back, tar);
//! assert!(store.verify(Default::default())?.is_clean());
//! # Ok(()) }
//! ```
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod apply;
mod backend;
mod batchbuf;
mod bundle_check;
mod bundle_commit;
mod chunker;
mod dedup;
mod delta;
mod error;
mod export;
mod failpoint;
mod gc;
mod ids;
mod index;
mod ingest;
mod input;
mod layermap;
mod layerobj;
mod pack;
#[cfg(feature = "client")]
mod partial;
#[cfg(feature = "client")]
mod pinned_tls;
mod possession;
mod recipe;
mod reindex;
#[cfg(feature = "client")]
mod remote;
#[cfg(feature = "server")]
pub mod server;
mod spill;
mod store;
mod tarsplit;
#[cfg(test)]
mod testutil;
mod token;
mod transfer;
mod unsettled;
mod verify;
mod wire;

pub use apply::{ApplyOutcome, MissingRef};
pub use backend::{Backend, FaultyBackend, LocalBackend, MemoryBackend, PackBytes};
#[cfg(feature = "s3")]
pub use backend::{S3Backend, S3Options, S3Stats};
pub use chunker::ChunkerParams;
pub use dedup::PackSummary;
pub use error::{Error, ErrorKind, Result};
pub use export::LayerReader;
pub use gc::{GcOptions, GcSummary};
pub use ids::{BlobDigest, ChunkId, ClientId, FileId, LayerId, PackId};
pub use index::LayerInfo;
pub use ingest::{IngestOptions, IngestSummary};
pub use input::Compression;
/// The `object_store` crate the S3 backend is built on, to pass any of its
/// stores to [`S3Backend::with_store`].
#[cfg(feature = "s3")]
pub use object_store;
pub use possession::{ClientInfo, Diff, DiffOptions, DiffSummary, FileDiff, FileState};
pub use recipe::{FileRecipe, RecipeItem, RecipeReader};
pub use reindex::ReindexSummary;
#[cfg(feature = "client")]
pub use remote::{PullSummary, PushSummary, Remote, TransferOptions, Via};
pub use store::{Store, StoreOptions, StoreStats};
pub use token::{issue_token_at, Claims, Scope, TokenVerifier};
pub use transfer::{
    parse_chunk_ids, read_chunk_batch, read_chunk_batch_any, RecipeBundle, VerifiedChunk, MAX_BATCH, MAX_BUNDLE,
    MAX_QUERY,
};
pub use verify::{Damage, VerifyOptions, VerifyReport};

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_sync() {
        assert_send_sync::<crate::Store>();
    }
}
