//! A bounds-checked big-endian reader over a byte slice: the one the NBD
//! server's option parser and the NBD client's reply parser both use.

/// Why a read ran out of or past its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// Fewer bytes than the field needs, in the named structure.
    Truncated(&'static str),
    /// Bytes left over after the named structure.
    Trailing(&'static str),
}

/// Reads fields off the front of `buf`; `what` names the structure in errors.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        if self.buf.len() < n {
            return Err(ReadError::Truncated(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ReadError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Ends the structure: no bytes may be left.
    pub(crate) fn finish(self) -> Result<(), ReadError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ReadError::Trailing(self.what))
        }
    }
}
