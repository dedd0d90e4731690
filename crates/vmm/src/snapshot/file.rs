//! The snapshot file: a fixed header, then the state encoded with postcard.
//!
//! ```text
//! 0   8 bytes  magic "KITESNAP"
//! 8   u32 LE   format version (FORMAT_VERSION)
//! 12  u64 LE   length of the payload
//! 20  u32 LE   CRC-32 (IEEE) of the payload
//! 24  payload  postcard encoding of SnapshotState
//! ```
//! A file of another version, or whose length or checksum is wrong, is refused with one line
//! saying which; nothing is decoded from a payload whose checksum fails.

use super::SnapshotState;

pub const MAGIC: [u8; 8] = *b"KITESNAP";
/// Bumped whenever [`SnapshotState`] or anything in it changes shape.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 24;

/// Why a snapshot file cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not a Kite snapshot file (no KITESNAP magic)")]
    Magic,
    #[error(
        "snapshot format version {found}, this Kite reads version {FORMAT_VERSION}: make the snapshot again with this Kite"
    )]
    Version { found: u32 },
    #[error("damaged snapshot file: {0}")]
    Damaged(String),
}

/// The bytes of a snapshot file for `state`.
pub fn encode(state: &SnapshotState) -> Result<Vec<u8>, String> {
    let payload =
        postcard::to_stdvec(state).map_err(|e| format!("cannot encode the state: {e}"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Read a snapshot file's bytes: any input gives a state or an error, never a panic.
pub fn parse(bytes: &[u8]) -> Result<SnapshotState, ParseError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(ParseError::Magic);
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(ParseError::Damaged(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    };
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(ParseError::Version { found: version });
    }
    let len = u64::from_le_bytes(header[12..20].try_into().unwrap_or([0; 8]));
    let crc = u32_at(20);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(ParseError::Damaged(format!(
            "the header says {len} bytes of state, the file has {} (truncated?)",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(ParseError::Damaged("checksum mismatch".into()));
    }
    let (state, rest): (SnapshotState, &[u8]) = postcard::take_from_bytes(payload)
        .map_err(|e| ParseError::Damaged(format!("cannot decode the state: {e}")))?;
    if !rest.is_empty() {
        return Err(ParseError::Damaged(format!(
            "{} bytes after the state",
            rest.len()
        )));
    }
    state.check().map_err(ParseError::Damaged)?;
    Ok(state)
}
