//! Reading a write log: the header, then every record in order, each
//! checked (fields, entry number, CRC) before it counts. The first record
//! that is short or fails a check ends the log; a log that does not end
//! with an `End` record is *unfinished* (the daemon stopped while
//! logging, or the file was damaged), and the tools refuse it unless told
//! to take its complete records (`--allow-torn`).

use std::io::Read;

use super::format::{LogHeader, RecordHead, RecordKind, HEADER_LEN, RECORD_LEN};
use super::LogError;

/// One entry of a log, as indexed (its payload stays in the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The record's fixed part.
    pub head: RecordHead,
    /// Byte of the log where the payload starts.
    pub payload_at: u64,
    /// A mark's name.
    pub name: Option<String>,
}

/// How the log ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// With an `End` record: stopped cleanly.
    Ended,
    /// Without one: the entries before byte `at` are complete; `problem`
    /// says what is at `at` (None: nothing, the file ends there).
    Unfinished {
        /// Where the complete records end.
        at: u64,
        /// What is wrong with the bytes from `at` on.
        problem: Option<String>,
    },
}

/// A log's header and entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogIndex {
    /// The header.
    pub header: LogHeader,
    /// Every complete entry, in order (the `End` record not included).
    pub entries: Vec<Entry>,
    /// How it ends.
    pub tail: Tail,
}

impl LogIndex {
    /// Reads a whole log from `r`.
    pub fn scan(mut r: impl Read) -> Result<LogIndex, LogError> {
        let mut head = vec![0u8; HEADER_LEN];
        let got = read_full(&mut r, &mut head)?;
        let header = LogHeader::decode(&head[..got])?;
        let mut index = LogIndex {
            header,
            entries: Vec::new(),
            tail: Tail::Ended,
        };
        index.tail = index.scan_records(&mut r)?;
        Ok(index)
    }

    fn scan_records(&mut self, r: &mut impl Read) -> Result<Tail, LogError> {
        let mut at = HEADER_LEN as u64;
        let mut payload = Vec::new();
        loop {
            let unfinished = |problem: Option<String>| Ok(Tail::Unfinished { at, problem });
            let mut raw = [0u8; RECORD_LEN];
            match read_full(r, &mut raw)? {
                0 => return unfinished(None),
                RECORD_LEN => {}
                n => return unfinished(Some(format!("a record cut short after {n} bytes"))),
            }
            let n = self.entries.len() as u64;
            let head = match RecordHead::decode(&raw, at, n, self.header.volume_size) {
                Ok(h) => h,
                Err(e) => return unfinished(Some(e.to_string())),
            };
            payload.clear();
            let want = u64::from(head.payload);
            r.by_ref()
                .take(want)
                .read_to_end(&mut payload)
                .map_err(LogError::Read)?;
            if (payload.len() as u64) < want {
                return unfinished(Some(format!("entry {n}: payload cut short")));
            }
            if !head.crc_ok(&raw, &payload) {
                return unfinished(Some(format!("entry {n}: checksum mismatch")));
            }
            if head.kind == RecordKind::End {
                return self.after_end(r, at);
            }
            let name = (head.kind == RecordKind::Mark)
                .then(|| String::from_utf8_lossy(&payload).into_owned());
            let payload_at = at + RECORD_LEN as u64;
            self.entries.push(Entry {
                head,
                payload_at,
                name,
            });
            at = payload_at + want;
        }
    }

    /// Nothing may follow the `End` record.
    fn after_end(&self, r: &mut impl Read, at: u64) -> Result<Tail, LogError> {
        let mut one = [0u8; 1];
        if read_full(r, &mut one)? != 0 {
            return Err(LogError::Corrupt {
                at: at + RECORD_LEN as u64,
                entry: None,
                why: "bytes after the end record".into(),
            });
        }
        Ok(Tail::Ended)
    }

    /// Refuses an unfinished log unless `allow_torn`.
    pub fn require_complete(&self, allow_torn: bool) -> Result<(), LogError> {
        match &self.tail {
            Tail::Ended => Ok(()),
            Tail::Unfinished { .. } if allow_torn => Ok(()),
            Tail::Unfinished { at, problem } => Err(LogError::Unfinished {
                entries: self.entries.len() as u64,
                at: *at,
                problem: problem
                    .clone()
                    .unwrap_or_else(|| "the file ends there".into()),
            }),
        }
    }

    /// Entry numbers of the flush records, in order.
    pub fn flushes(&self) -> Vec<u64> {
        self.positions(|e| e.head.kind == RecordKind::Flush)
    }

    /// Entry number of the first mark called `name`.
    pub fn mark(&self, name: &str) -> Option<u64> {
        self.positions(|e| e.name.as_deref() == Some(name))
            .first()
            .copied()
    }

    fn positions(&self, f: impl Fn(&Entry) -> bool) -> Vec<u64> {
        (0..self.entries.len() as u64)
            .filter(|&i| f(&self.entries[i as usize]))
            .collect()
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, LogError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LogError::Read(e)),
        }
    }
    Ok(got)
}
