//! Unit newtypes for addresses and sizes, and the human size parser ("64K", "256M").
//!
//! Byte offsets on a device are [`ByteOffset`]; the RAID layout has its own
//! chunk/stripe/member newtypes in `raid::layout`.

use std::fmt;
use std::ops::{Add, Sub};

/// Size of a virtio/NBD sector. Always 512, whatever the logical block size.
pub const SECTOR_SIZE: u64 = 512;

/// A byte offset on a block device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteOffset(pub u64);

impl ByteOffset {
    /// The raw byte count.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl Add<u64> for ByteOffset {
    type Output = ByteOffset;
    fn add(self, rhs: u64) -> ByteOffset {
        ByteOffset(self.0 + rhs)
    }
}

impl Sub for ByteOffset {
    type Output = u64;
    fn sub(self, rhs: ByteOffset) -> u64 {
        self.0 - rhs.0
    }
}

impl fmt::Display for ByteOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Error from [`parse_size`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// The text is not a number with an optional K/M/G/T suffix.
    #[error("invalid size {0:?}: expected a number with an optional K, M, G or T suffix")]
    Invalid(String),
    /// The number does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    TooLarge(String),
}

/// Parses "4096", "64K", "64KiB", "256M", "1G", "2T" (binary multiples).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(SizeError::Invalid(text.to_string()));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| SizeError::TooLarge(text.to_string()))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(SizeError::Invalid(text.to_string())),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::TooLarge(text.to_string()))
}

/// Formats a byte count the way [`parse_size`] reads it, using the largest exact unit.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{}", bytes >> shift, unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_accepts_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64kib"), Ok(65536));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
    }

    #[test]
    fn parse_size_rejects_garbage() {
        assert!(parse_size("").is_err());
        assert!(parse_size("K").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("16777216T").is_err());
    }

    #[test]
    fn format_size_round_trips() {
        for v in [0, 1, 512, 4096, 65536, 256 << 20, 3 << 30] {
            assert_eq!(parse_size(&format_size(v)), Ok(v));
        }
    }
}
