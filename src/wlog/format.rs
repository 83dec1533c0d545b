//! The write log's on-disk format (docs/FORMAT.md §13 "Write log file"):
//! the header, the records, their encoding and the checked decoding of
//! untrusted bytes. Everything little-endian, CRC-32 (IEEE) checksums.

use super::LogError;

/// Header magic.
pub const LOG_MAGIC: [u8; 8] = *b"VRAIDLOG";
/// Format version this code writes and reads.
pub const LOG_VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 512;
/// Record magic.
pub const RECORD_MAGIC: [u8; 4] = *b"WREC";
/// Bytes of a record's fixed part.
pub const RECORD_LEN: usize = 40;
/// Largest payload of one record: longer writes take several records.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Longest volume name and mark name.
pub const MAX_NAME: usize = 255;
/// Record flag: the write was FUA.
pub const FLAG_FUA: u8 = 1;
/// Record flag: a zeroing that allowed unmapping.
pub const FLAG_UNMAP: u8 = 2;

/// What a record records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Data written (`len` bytes of payload).
    Write = 1,
    /// A discard: the range reads back as zeroes.
    Trim = 2,
    /// A write-zeroes.
    Zero = 3,
    /// A FLUSH that completed; `offset` holds how many entries it covers.
    Flush = 4,
    /// A named point (`vraid log mark`); the payload is the name.
    Mark = 5,
    /// The log was stopped cleanly: nothing follows.
    End = 6,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::Write,
            2 => RecordKind::Trim,
            3 => RecordKind::Zero,
            4 => RecordKind::Flush,
            5 => RecordKind::Mark,
            6 => RecordKind::End,
            _ => return None,
        })
    }

    /// The lower-case name shown by `vraid log list`.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Write => "write",
            RecordKind::Trim => "trim",
            RecordKind::Zero => "zero",
            RecordKind::Flush => "flush",
            RecordKind::Mark => "mark",
            RecordKind::End => "end",
        }
    }

    /// True for the kinds that change the image.
    pub fn changes_data(self) -> bool {
        matches!(
            self,
            RecordKind::Write | RecordKind::Trim | RecordKind::Zero
        )
    }
}

/// The log's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// Bytes of the volume logged.
    pub volume_size: u64,
    /// Identity of this log.
    pub uuid: [u8; 16],
    /// When logging started, nanoseconds since the Unix epoch.
    pub started_ns: u64,
    /// Name of the volume logged.
    pub volume: String,
}

impl LogHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&LOG_MAGIC);
        b[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.volume_size.to_le_bytes());
        b[24..40].copy_from_slice(&self.uuid);
        b[40..48].copy_from_slice(&self.started_ns.to_le_bytes());
        let name = &self.volume.as_bytes()[..self.volume.len().min(MAX_NAME)];
        b[48..50].copy_from_slice(&(name.len() as u16).to_le_bytes());
        b[50..50 + name.len()].copy_from_slice(name);
        let crc = crc32fast::hash(&b[..HEADER_LEN - 4]);
        b[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header.
    pub fn decode(b: &[u8]) -> Result<LogHeader, LogError> {
        if b.len() < 8 || b[0..8] != LOG_MAGIC {
            return Err(LogError::NotALog);
        }
        if b.len() < HEADER_LEN {
            return Err(LogError::Truncated {
                at: 0,
                what: "header".into(),
            });
        }
        let version = le32(&b[8..12]);
        if version != LOG_VERSION || le32(&b[12..16]) as usize != HEADER_LEN {
            return Err(LogError::Version(version));
        }
        if crc32fast::hash(&b[..HEADER_LEN - 4]) != le32(&b[HEADER_LEN - 4..HEADER_LEN]) {
            return Err(LogError::Corrupt {
                at: 0,
                entry: None,
                why: "header checksum mismatch".into(),
            });
        }
        let name_len = usize::from(u16::from_le_bytes([b[48], b[49]]));
        let name = b.get(50..50 + name_len.min(MAX_NAME + 1)).unwrap_or(&[]);
        let volume = String::from_utf8(name.to_vec())
            .ok()
            .filter(|_| name_len <= MAX_NAME)
            .ok_or_else(|| LogError::Corrupt {
                at: 48,
                entry: None,
                why: "volume name is not UTF-8 of at most 255 bytes".into(),
            })?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[24..40]);
        Ok(LogHeader {
            volume_size: le64(&b[16..24]),
            uuid,
            started_ns: le64(&b[40..48]),
            volume,
        })
    }
}

/// A record's fixed part, as decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHead {
    /// What it records.
    pub kind: RecordKind,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Entry number: its position in the log, from 0.
    pub index: u64,
    /// Byte offset of the range (a flush: the entries it covers).
    pub offset: u64,
    /// Bytes of the range.
    pub len: u64,
    /// Bytes of payload that follow.
    pub payload: u32,
    /// CRC-32 of the fixed part's first 36 bytes and the payload.
    pub crc: u32,
}

impl RecordHead {
    /// A record's fixed part with its checksum over `payload`.
    pub fn encode(&self, payload: &[u8]) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[4] = self.kind as u8;
        b[5] = self.flags;
        b[8..16].copy_from_slice(&self.index.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b[32..36].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..36]);
        h.update(payload);
        b[36..40].copy_from_slice(&h.finalize().to_le_bytes());
        b
    }

    /// Parses the fixed part of entry `index` at byte `at` of the log and
    /// checks every field that does not need the payload or the CRC.
    pub fn decode(b: &[u8; RECORD_LEN], at: u64, index: u64, size: u64) -> Result<Self, LogError> {
        let bad = |why: String| LogError::Corrupt {
            at,
            entry: Some(index),
            why,
        };
        if b[0..4] != RECORD_MAGIC {
            return Err(bad("no record magic".into()));
        }
        let kind = RecordKind::from_u8(b[4]).ok_or_else(|| bad(format!("kind {}", b[4])))?;
        let head = RecordHead {
            kind,
            flags: b[5],
            index: le64(&b[8..16]),
            offset: le64(&b[16..24]),
            len: le64(&b[24..32]),
            payload: le32(&b[32..36]),
            crc: le32(&b[36..40]),
        };
        head.check(index, size).map_err(bad)?;
        if b[6..8] != [0, 0] {
            return Err(bad("reserved bytes are not zero".into()));
        }
        Ok(head)
    }

    /// The field rules of one kind (docs/FORMAT.md §13 "Write log file").
    fn check(&self, index: u64, size: u64) -> Result<(), String> {
        if self.index != index {
            return Err(format!("entry number {} where {index} was due", self.index));
        }
        if self.flags & !(FLAG_FUA | FLAG_UNMAP) != 0 {
            return Err(format!("unknown flags {:#x}", self.flags));
        }
        let (payload, range) = match self.kind {
            RecordKind::Write => (self.len, true),
            RecordKind::Trim | RecordKind::Zero => (0, true),
            RecordKind::Flush => (0, false),
            RecordKind::Mark => (u64::from(self.payload).min(MAX_NAME as u64 + 1), false),
            RecordKind::End => (0, false),
        };
        if u64::from(self.payload) != payload || self.payload > MAX_PAYLOAD {
            return Err(format!("payload of {} bytes", self.payload));
        }
        if self.kind == RecordKind::Mark && self.payload as usize > MAX_NAME {
            return Err("mark name longer than 255 bytes".into());
        }
        let in_volume = self.offset.checked_add(self.len).is_some_and(|e| e <= size);
        if range && (self.len == 0 || !in_volume) {
            return Err(format!(
                "range {}+{} outside the volume of {size} bytes",
                self.offset, self.len
            ));
        }
        if !range && self.len != 0 {
            return Err(format!("a {} with a length", self.kind.name()));
        }
        let covers_ok = self.kind != RecordKind::Flush || self.offset <= index;
        if !covers_ok || (!range && self.kind != RecordKind::Flush && self.offset != 0) {
            return Err(format!("offset {} of a {}", self.offset, self.kind.name()));
        }
        Ok(())
    }

    /// True when `payload` matches the record's checksum.
    pub fn crc_ok(&self, raw: &[u8; RECORD_LEN], payload: &[u8]) -> bool {
        let mut h = crc32fast::Hasher::new();
        h.update(&raw[..36]);
        h.update(payload);
        h.finalize() == self.crc
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
