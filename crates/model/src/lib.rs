//! The gridsync event model.
//!
//! This crate is pure: no I/O, no clock reads, no tokio, no sled. It defines
//!
//! * the field-event kinds and their `data` types ([`kinds`]), which are also
//!   the source of the JSON Schema files in `schemas/` ([`schema`]);
//! * the canonical msgpack encoding of an event envelope and how it is hashed
//!   ([`event`], [`canonical`]);
//! * chunks: runs of consecutive events of one origin closed by a signed chain
//!   head, the unit of storage, signing and transfer ([`chunk`]);
//! * ingest validation: JSON in, a [`ingest::PreparedEvent`] or a precise
//!   error naming the field and the rule broken out ([`ingest`]).
//!
//! What exactly is hashed and signed is written down in `ARCHITECTURE.md`
//! ("Canonical bytes") and pinned by the fixed vectors in `tests/vectors.rs`.

pub mod api;
pub mod canonical;
pub mod chunk;
pub mod event;
pub mod ids;
pub mod ingest;
pub mod keys;
pub mod kinds;
pub mod schema;
pub mod strict;
pub mod time_fmt;

pub use chunk::{Chunk, ChunkError, EventRecord, SignedHead, VerifiedEvent};
pub use event::{Envelope, EnvelopeError, Hash32, OccurredAt, Personal, ZERO_HASH};
pub use ids::NodeId;
