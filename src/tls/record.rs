//! TLS 1.3 record protection of our own (docs/FORMAT.md §14): one
//! direction's traffic secret, key, IV and sequence number, records sealed
//! and opened in place with ring's AEAD, KeyUpdate's "traffic upd" step.
//!
//! ```text
//!  record = type 23 | 0x0303 | length(2) | AEAD(content | inner type | 0*) | tag(16)
//!  nonce  = iv XOR seq (big-endian, right aligned); aad = the 5-byte header
//! ```
//!
//! No I/O here: `fast` moves the bytes.

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use ring::hkdf;

/// Record header bytes.
pub const HEADER: usize = 5;
/// AEAD tag bytes (all three suites).
pub const TAG: usize = 16;
/// Largest content a record carries (2^14).
pub const MAX_CONTENT: usize = 1 << 14;
/// Largest ciphertext a record may carry (2^14 + 256).
pub const MAX_CIPHERTEXT: usize = MAX_CONTENT + 256;
/// Records we send under one key before changing it (below 2^24.5).
pub const SEND_LIMIT: u64 = 1 << 24;
/// Records we accept under one key (AES-GCM's 2^24.5).
pub const RECEIVE_LIMIT: u64 = 23_726_566;

/// Content types (RFC 8446 §5.1).
pub const ALERT: u8 = 21;
/// Handshake messages (only KeyUpdate after the handshake).
pub const HANDSHAKE: u8 = 22;
/// Application data.
pub const APPLICATION_DATA: u8 = 23;
/// Handshake message type KeyUpdate.
pub const KEY_UPDATE: u8 = 24;
/// Handshake message type NewSessionTicket.
pub const NEW_SESSION_TICKET: u8 = 4;

/// The TLS 1.3 suites this path runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// TLS13_AES_128_GCM_SHA256.
    Aes128Gcm,
    /// TLS13_AES_256_GCM_SHA384.
    Aes256Gcm,
    /// TLS13_CHACHA20_POLY1305_SHA256.
    Chacha20Poly1305,
}

impl Suite {
    /// The suite rustls negotiated, if this path runs it.
    pub fn of(suite: rustls::CipherSuite) -> Option<Suite> {
        use rustls::CipherSuite as C;
        match suite {
            C::TLS13_AES_128_GCM_SHA256 => Some(Suite::Aes128Gcm),
            C::TLS13_AES_256_GCM_SHA384 => Some(Suite::Aes256Gcm),
            C::TLS13_CHACHA20_POLY1305_SHA256 => Some(Suite::Chacha20Poly1305),
            _ => None,
        }
    }

    fn aead(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn hkdf(self) -> hkdf::Algorithm {
        match self {
            Suite::Aes256Gcm => hkdf::HKDF_SHA384,
            _ => hkdf::HKDF_SHA256,
        }
    }

    fn hash_len(self) -> usize {
        hkdf::KeyType::len(&self.hkdf())
    }
}

/// Why a record was refused; every one ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Longer than 2^14 + 256 bytes of ciphertext (record_overflow).
    Overflow,
    /// Not an application_data record, or a malformed header.
    BadHeader,
    /// The tag did not match (bad_record_mac).
    BadMac,
    /// No inner content type (all zeros) or too long a plaintext.
    BadInner,
    /// A message not allowed after the handshake (unexpected_message).
    Unexpected,
    /// Too many records under one key.
    KeyExhausted,
    /// A handshake message cut short or spanning records (decode_error).
    Decode,
    /// The peer sent this alert (not close_notify): nothing is sent back.
    Alert(u8),
}

impl RecordError {
    /// The fatal alert we send for it (RFC 8446 §6.2); 0: none.
    pub fn alert(self) -> u8 {
        match self {
            RecordError::Alert(_) => 0,
            RecordError::Overflow => 22,
            RecordError::BadMac => 20,
            RecordError::Decode => 50,
            RecordError::BadHeader
            | RecordError::BadInner
            | RecordError::Unexpected
            | RecordError::KeyExhausted => 10,
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let RecordError::Alert(a) = self {
            return write!(f, "TLS peer sent alert {a}");
        }
        f.write_str(match self {
            RecordError::Overflow => "TLS record over 2^14 + 256 bytes (record_overflow)",
            RecordError::BadHeader => "TLS record header not application_data 0x0303",
            RecordError::BadMac => "TLS record failed to decrypt (bad_record_mac)",
            RecordError::BadInner => "TLS inner plaintext malformed",
            RecordError::Unexpected => "TLS message not allowed after the handshake",
            RecordError::KeyExhausted => "TLS peer sent too many records under one key",
            RecordError::Decode => "TLS handshake message malformed (decode_error)",
            RecordError::Alert(_) => unreachable!("written above"),
        })
    }
}

impl std::error::Error for RecordError {}

impl From<RecordError> for std::io::Error {
    fn from(e: RecordError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// `HKDF-Expand-Label(secret, label, "", len)` (RFC 8446 §7.1).
fn expand_label(suite: Suite, secret: &[u8], label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Prk::new_less_safe(suite.hkdf(), secret);
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &[0]];
    prk.expand(&info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .expect("HKDF output length within 255 * hash length");
}

/// The key and IV a traffic secret gives.
pub fn derive(suite: Suite, secret: &[u8]) -> (Vec<u8>, [u8; NONCE_LEN]) {
    let mut key = vec![0; suite.aead().key_len()];
    let mut iv = [0; NONCE_LEN];
    expand_label(suite, secret, b"key", &mut key);
    expand_label(suite, secret, b"iv", &mut iv);
    (key, iv)
}

/// The traffic secret after a KeyUpdate: HKDF-Expand-Label(secret,
/// "traffic upd", "", Hash.length).
pub fn next_secret(suite: Suite, secret: &[u8]) -> Vec<u8> {
    let mut next = vec![0; suite.hash_len()];
    expand_label(suite, secret, b"traffic upd", &mut next);
    next
}

/// One direction of a connection.
pub struct Direction {
    suite: Suite,
    secret: Vec<u8>,
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    /// Records before a KeyUpdate is due ([`SEND_LIMIT`]) and records
    /// accepted under one key ([`RECEIVE_LIMIT`]); smaller in tests.
    limits: (u64, u64),
}

impl fmt::Debug for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direction")
            .field("suite", &self.suite)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Direction {
    /// Keys from `secret`, going on at record `seq`.
    pub fn new(suite: Suite, secret: Vec<u8>, seq: u64) -> Direction {
        let (key, iv) = derive(suite, &secret);
        let key = UnboundKey::new(suite.aead(), &key).expect("key length of the suite");
        Direction {
            suite,
            secret,
            key: LessSafeKey::new(key),
            iv,
            seq,
            limits: (SEND_LIMIT, RECEIVE_LIMIT),
        }
    }

    /// Other send and receive limits (tests: reaching them in a test run).
    #[cfg(test)]
    pub(crate) fn set_limits(&mut self, send: u64, receive: u64) {
        self.limits = (send, receive);
    }

    /// Whether our key has sealed its share of records (KeyUpdate due).
    pub fn send_due(&self) -> bool {
        self.seq >= self.limits.0
    }

    /// Records protected under the current key so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The next key (KeyUpdate): secret' = HKDF-Expand-Label(secret,
    /// "traffic upd", "", Hash.length); the sequence starts again at 0.
    pub fn update(&mut self) {
        let limits = self.limits;
        *self = Direction::new(self.suite, next_secret(self.suite, &self.secret), 0);
        self.limits = limits;
    }

    fn nonce(&self) -> Nonce {
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Seals `record` in place: `record` is header room (5 bytes), the
    /// content, one byte for `inner`, then 16 bytes of tag room.
    pub fn seal(&mut self, record: &mut [u8], inner: u8) {
        let len = record.len();
        assert!(len >= HEADER + 1 + TAG && len - HEADER - 1 - TAG <= MAX_CONTENT);
        let header = header(len - HEADER);
        record[..HEADER].copy_from_slice(&header);
        record[len - TAG - 1] = inner;
        let (body, tag) = record[HEADER..].split_at_mut(len - HEADER - TAG);
        let t = self
            .key
            .seal_in_place_separate_tag(self.nonce(), Aad::from(header), body)
            .expect("sealing cannot fail below the length limit");
        tag.copy_from_slice(t.as_ref());
        self.seq += 1;
    }

    /// Seals one record whose ciphertext stays where its content is:
    /// `body` is the content followed by one byte of room, where `inner`
    /// is written (and sealed). Returns the record's header and its tag,
    /// which go on the wire before and after `body`.
    pub fn seal_separate(&mut self, body: &mut [u8], inner: u8) -> ([u8; HEADER], [u8; TAG]) {
        let len = body.len();
        assert!((1..=MAX_CONTENT + 1).contains(&len));
        let header = header(len + TAG);
        body[len - 1] = inner;
        let t = self
            .key
            .seal_in_place_separate_tag(self.nonce(), Aad::from(header), body)
            .expect("sealing cannot fail below the length limit");
        self.seq += 1;
        (header, t.as_ref().try_into().expect("tag length"))
    }

    /// Opens a whole record (header and ciphertext) in place: its inner
    /// content type and the range of its content within `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, std::ops::Range<usize>), RecordError> {
        if self.seq >= self.limits.1 {
            return Err(RecordError::KeyExhausted);
        }
        let header: [u8; HEADER] = record[..HEADER].try_into().expect("header length");
        if body_len(&header)? != record.len() - HEADER {
            return Err(RecordError::BadHeader);
        }
        let nonce = self.nonce();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(header), &mut record[HEADER..])
            .map_err(|_| RecordError::BadMac)?;
        self.seq += 1;
        let Some(end) = plain.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::BadInner);
        };
        if end > MAX_CONTENT {
            return Err(RecordError::Overflow);
        }
        Ok((plain[end], HEADER..HEADER + end))
    }
}

/// The header of an application_data record of `body` bytes.
pub fn header(body: usize) -> [u8; HEADER] {
    let l = (body as u16).to_be_bytes();
    [APPLICATION_DATA, 3, 3, l[0], l[1]]
}

/// The body length a received header announces, checked.
pub fn body_len(h: &[u8; HEADER]) -> Result<usize, RecordError> {
    if h[0] != APPLICATION_DATA || h[1] != 3 || h[2] != 3 {
        return Err(RecordError::BadHeader);
    }
    let len = u16::from_be_bytes([h[3], h[4]]) as usize;
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::Overflow);
    }
    if len < TAG + 1 {
        return Err(RecordError::BadInner);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(suite: Suite) -> (Direction, Direction) {
        let secret = vec![7u8; suite.hash_len()];
        (
            Direction::new(suite, secret.clone(), 5),
            Direction::new(suite, secret, 5),
        )
    }

    fn sealed(tx: &mut Direction, content: &[u8]) -> Vec<u8> {
        let mut r = vec![0; HEADER + content.len() + 1 + TAG];
        r[HEADER..HEADER + content.len()].copy_from_slice(content);
        tx.seal(&mut r, APPLICATION_DATA);
        r
    }

    #[test]
    fn sealed_records_open_in_order_under_every_suite() {
        for suite in [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305] {
            let (mut tx, mut rx) = pair(suite);
            for content in [&b"a"[..], &[9u8; MAX_CONTENT][..]] {
                let mut r = sealed(&mut tx, content);
                let (t, range) = rx.open(&mut r).unwrap();
                assert_eq!((t, &r[range]), (APPLICATION_DATA, content));
            }
        }
    }

    #[test]
    fn a_flipped_byte_a_replay_or_a_skipped_record_fails_to_open() {
        let (mut tx, mut rx) = pair(Suite::Aes128Gcm);
        let first = sealed(&mut tx, b"first");
        let mut flipped = first.clone();
        flipped[HEADER + 2] ^= 1;
        assert_eq!(
            rx.clone_for_test().open(&mut flipped),
            Err(RecordError::BadMac)
        );
        let mut skipped = sealed(&mut tx, b"second");
        assert_eq!(
            rx.clone_for_test().open(&mut skipped),
            Err(RecordError::BadMac)
        );
        rx.open(&mut first.clone()).unwrap();
        assert_eq!(rx.open(&mut first.clone()), Err(RecordError::BadMac));
    }

    #[test]
    fn oversized_and_foreign_headers_are_refused_from_the_header() {
        let over = header(MAX_CIPHERTEXT + 1);
        assert_eq!(body_len(&over), Err(RecordError::Overflow));
        assert_eq!(body_len(&header(MAX_CIPHERTEXT)), Ok(MAX_CIPHERTEXT));
        assert_eq!(body_len(&[22, 3, 3, 0, 40]), Err(RecordError::BadHeader));
        assert_eq!(body_len(&[23, 3, 1, 0, 40]), Err(RecordError::BadHeader));
    }

    #[test]
    fn a_record_sealed_apart_from_its_header_and_tag_opens_as_one() {
        let (mut tx, mut rx) = pair(Suite::Aes128Gcm);
        let mut body = b"content?".to_vec();
        let (h, t) = tx.seal_separate(&mut body, APPLICATION_DATA);
        let mut r = [&h[..], &body, &t].concat();
        let (kind, range) = rx.open(&mut r).unwrap();
        assert_eq!((kind, &r[range]), (APPLICATION_DATA, &b"content"[..]));
    }

    #[test]
    fn both_ends_follow_a_key_update() {
        let (mut tx, mut rx) = pair(Suite::Aes256Gcm);
        tx.update();
        let mut r = sealed(&mut tx, b"after");
        assert_eq!(
            rx.clone_for_test().open(&mut r.clone()),
            Err(RecordError::BadMac)
        );
        rx.update();
        assert_eq!(rx.seq(), 0);
        rx.open(&mut r).unwrap();
    }

    impl Direction {
        fn clone_for_test(&self) -> Direction {
            Direction::new(self.suite, self.secret.clone(), self.seq)
        }
    }
}
