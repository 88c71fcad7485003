//! Integration tests, one binary: the `chunkstore` command run as a real
//! process on tars written by real tools.

mod bad_input;
mod cli;
mod common;
mod crash;
pub(crate) mod dedup;
mod dedup_clients;
mod dedup_hostile;
mod delta;
mod golden;
mod layers;
pub(crate) mod net;
mod net_blob;
mod net_clients;
mod net_hostile;
mod net_resume;
mod props;
pub(crate) mod roundtrip;
mod s3;
mod tls;
