//! The snapshot of one partition's state, and its file format.
//!
//! A file is a 20-byte header followed by the state encoded with postcard (a compact,
//! non-self-describing serde format: varint integers, no field names):
//!
//! | bytes | content                                                              |
//! |-------|----------------------------------------------------------------------|
//! | 0..8  | magic `SLUICESN`                                                     |
//! | 8..10 | format version, little-endian u16 ([`FORMAT_VERSION`])               |
//! | 10..14| fingerprint of the pipeline's stateful settings, little-endian u32    |
//! | 14..18| CRC-32 of the body, little-endian u32                                |
//! | 18..20| reserved, must be zero                                               |
//! | 20..  | body                                                                 |
//!
//! A file written by another format version, for a pipeline whose window, aggregates or key
//! changed, or damaged in any way is refused with an error that says which.

use serde::{Deserialize, Serialize};

use crate::{watermark::UpstreamWatermarks, window::WindowsState};

/// First bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"SLUICESN";
/// The version this release writes and reads.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 20;

/// The state of one (topic, partition) after every record before `next_offset` was processed.
#[derive(Debug, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// The next offset to read: the offset committed with this snapshot.
    pub next_offset: i64,
    /// Event-time progress.
    pub clock: ClockState,
    /// The last watermark announced downstream (stage one of a repartitioned pipeline).
    pub announced: Option<i64>,
    /// Window state, on partitions that hold windows.
    pub windows: Option<WindowsState>,
}

/// Event-time progress of a partition.
#[derive(Debug, Serialize, Deserialize)]
pub enum ClockState {
    /// A source partition: its highest event time and watermark.
    Local {
        /// Highest event time seen.
        max_event_time: Option<i64>,
        /// The watermark.
        watermark: i64,
    },
    /// A repartition-topic partition: its upstream watermarks and, per upstream partition, the
    /// highest upstream offset seen (for de-duplication).
    Upstream {
        /// Upstream watermarks.
        marks: UpstreamWatermarks,
        /// (upstream partition, highest offset seen).
        seen: Vec<(u32, i64)>,
    },
}

/// Why a snapshot file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Too short or not a snapshot.
    #[error("not a Sluice snapshot (bad header)")]
    NotASnapshot,
    /// Written by a format this release does not read.
    #[error("snapshot format version {found}, this release reads version {FORMAT_VERSION}")]
    Version {
        /// The file's version.
        found: u16,
    },
    /// Written for a pipeline whose stateful settings differ from this one's.
    #[error(
        "snapshot was written for different window, aggregate or key settings (fingerprint {found:08x}, this pipeline {expected:08x})"
    )]
    Fingerprint {
        /// This pipeline's fingerprint.
        expected: u32,
        /// The file's.
        found: u32,
    },
    /// The body does not match its checksum.
    #[error("snapshot is corrupt (checksum mismatch)")]
    Checksum,
    /// The body does not decode.
    #[error("snapshot body does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes a snapshot for a pipeline with `fingerprint`.
pub fn encode(snapshot: &PartitionSnapshot, fingerprint: u32) -> Vec<u8> {
    encode_framed(MAGIC, snapshot, fingerprint)
}

/// Decodes a snapshot file, checking magic, version, fingerprint and checksum.
pub fn decode(bytes: &[u8], fingerprint: u32) -> Result<PartitionSnapshot, SnapshotError> {
    decode_framed(MAGIC, bytes, fingerprint)
}

/// Encodes `body` behind the header described above, with `magic` naming what it is (a
/// partition's snapshot, a reference table's).
pub fn encode_framed<T: Serialize>(magic: &[u8; 8], body: &T, fingerprint: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    let mut out = postcard::to_extend(body, out).expect("in-memory encoding cannot fail");
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[14..18].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes what [`encode_framed`] wrote with `magic`, checking magic, version, fingerprint and
/// checksum.
pub fn decode_framed<T: serde::de::DeserializeOwned>(
    magic: &[u8; 8],
    bytes: &[u8],
    fingerprint: u32,
) -> Result<T, SnapshotError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != magic || bytes[18..20] != [0, 0] {
        return Err(SnapshotError::NotASnapshot);
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    let found = word(10);
    if found != fingerprint {
        return Err(SnapshotError::Fingerprint {
            expected: fingerprint,
            found,
        });
    }
    let body = &bytes[HEADER_LEN..];
    if crc32fast::hash(body) != word(14) {
        return Err(SnapshotError::Checksum);
    }
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> PartitionSnapshot {
        PartitionSnapshot {
            next_offset: 1234,
            clock: ClockState::Local {
                max_event_time: Some(99_000),
                watermark: 93_999,
            },
            announced: Some(93_999),
            windows: None,
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let bytes = encode(&snapshot(), 7);
        let back = decode(&bytes, 7).unwrap();
        assert_eq!(back.next_offset, 1234);
        assert_eq!(back.announced, Some(93_999));
        assert!(matches!(
            back.clock,
            ClockState::Local {
                max_event_time: Some(99_000),
                watermark: 93_999
            }
        ));
    }

    #[test]
    fn every_damaged_byte_is_detected() {
        let bytes = encode(&snapshot(), 7);
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x41;
            assert!(
                decode(&damaged, 7).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1], 7),
            Err(SnapshotError::Checksum)
        ));
        assert!(matches!(
            decode(b"SLUICE", 7),
            Err(SnapshotError::NotASnapshot)
        ));
    }

    #[test]
    fn a_snapshot_of_a_changed_pipeline_or_another_version_is_refused() {
        let bytes = encode(&snapshot(), 7);
        assert!(matches!(
            decode(&bytes, 8),
            Err(SnapshotError::Fingerprint {
                expected: 8,
                found: 7
            })
        ));
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert!(matches!(
            decode(&v2, 7),
            Err(SnapshotError::Version { found: 2 })
        ));
    }
}
