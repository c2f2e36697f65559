//! What a chat session is made of besides its name: an unguessable token and a message rate
//! limiter. Both are pure data; the room owns them.

use std::fmt;
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Hex characters of the public half of a token: it picks the session in the room's map.
const SELECTOR_HEX: usize = 16;
/// Hex characters of the secret half: 128 bits from the OS random source.
const VERIFIER_HEX: usize = 32;
/// Length of every token.
pub(crate) const TOKEN_LEN: usize = SELECTOR_HEX + VERIFIER_HEX;

/// A session token: `selector` (64 random bits, used as the map key) followed by `verifier`
/// (128 random bits), both hex. Looking a session up by the selector and then comparing the
/// secret half ([`Verifier::matches`]) in constant time means the time a wrong token takes
/// never depends on how many of its secret characters were right (the "split token" pattern).
///
/// The text is kept in place (48 bytes), not in a `String`: a token is no heap block of its own.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token {
    text: [u8; TOKEN_LEN],
}

impl Token {
    /// A fresh token from the OS random source (`getrandom(2)`, falling back to `/dev/urandom`).
    pub(crate) fn generate() -> io::Result<Token> {
        let mut bytes = [0u8; (SELECTOR_HEX + VERIFIER_HEX) / 2];
        os_random(&mut bytes)?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Token::parse(&text).expect("hex of the right length"))
    }

    /// Parses a token as a client sends it; `None` unless it has the shape of one (the right
    /// length, lower-case hex). Says nothing about whether a session holds it.
    pub(crate) fn parse(text: &str) -> Option<Token> {
        if text.len() != TOKEN_LEN || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut bytes = [0; TOKEN_LEN];
        bytes.copy_from_slice(text.as_bytes());
        Some(Token { text: bytes })
    }

    /// The public half, used to find the session.
    pub(crate) fn selector(&self) -> u64 {
        self.text[..SELECTOR_HEX]
            .iter()
            .fold(0, |acc, &b| acc << 4 | u64::from(hex_digit(b)))
    }

    /// The secret half, as a session keeps it.
    pub(crate) fn verifier(&self) -> Verifier {
        let mut v = [0; VERIFIER_HEX / 2];
        for (byte, pair) in v.iter_mut().zip(self.text[SELECTOR_HEX..].chunks_exact(2)) {
            *byte = hex_digit(pair[0]) << 4 | hex_digit(pair[1]);
        }
        Verifier(v)
    }

    /// The token as text (sent to its owner only).
    pub(crate) fn as_str(&self) -> &str {
        // ASCII hex, checked by `parse`: the fallback never runs.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }
}

/// The value of a lower-case hex digit (checked by [`Token::parse`]).
fn hex_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        _ => b.wrapping_sub(b'a').wrapping_add(10),
    }
}

/// The secret half of a token, as its session keeps it: 16 bytes in place (its selector is the
/// session's key in the room's table). 32 bytes less a session than the whole token's text, in
/// every bucket of the table that 10,000 sessions in their grace period keep after their
/// streams close.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Verifier([u8; VERIFIER_HEX / 2]);

impl Verifier {
    /// Whether `token`'s secret half is this one, in time that does not depend on how much of
    /// it was right (see [`Token`]).
    pub(crate) fn matches(&self, token: &Token) -> bool {
        constant_time_eq(&self.0, &token.verifier().0)
    }

    /// The whole token of the session whose key is `selector` (for its `welcome`).
    pub(crate) fn token(&self, selector: u64) -> Token {
        let mut text = [0; TOKEN_LEN];
        let hex = |d: u8| b"0123456789abcdef"[usize::from(d & 15)];
        for (i, c) in text[..SELECTOR_HEX].iter_mut().enumerate() {
            *c = hex((selector >> (4 * (SELECTOR_HEX - 1 - i))) as u8);
        }
        for (pair, b) in text[SELECTOR_HEX..].chunks_exact_mut(2).zip(self.0) {
            pair[0] = hex(b >> 4);
            pair[1] = hex(b);
        }
        Token { text }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret, not even in a debug dump.
        f.write_str("Verifier(…)")
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret half, not even in a debug dump.
        write!(f, "Token({:016x}…)", self.selector())
    }
}

/// Equality of two byte strings that does not stop at the first difference.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

/// Fills `buf` from the OS random source.
fn os_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: rest is a valid writable buffer of rest.len() bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr() as *mut libc::c_void, rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Kernels before 3.17 have no getrandom: read the device instead.
            Some(libc::ENOSYS) => {
                return std::fs::File::open("/dev/urandom")?.read_exact(&mut buf[filled..]);
            }
            _ => return Err(err),
        }
    }
    Ok(())
}

/// A token bucket: `burst` messages at once, refilled at `rate` per second. The rate and the
/// burst are the room's (`--rate`, `--burst`), passed in rather than kept: every session holds
/// a bucket, and 16 bytes less a session is 16 bytes less in every bucket of the room's table.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket of `burst`.
    pub(crate) fn new(burst: f64, now: Instant) -> RateLimiter {
        RateLimiter {
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token at `now`, or says how long until one is there.
    pub(crate) fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_of_192_bits_and_parse_back() {
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_eq!(a.as_str().len(), 48);
        assert_ne!(a.as_str(), b.as_str());
        let again = Token::parse(a.as_str()).unwrap();
        assert_eq!(again, a);
        assert_ne!(again, b);
        assert_eq!(again.selector(), a.selector());
        assert_eq!(
            Token::parse(&format!("{}{}", "00000000000000ff", "0".repeat(32)))
                .unwrap()
                .selector(),
            0xff
        );
        assert_eq!(
            Token::parse(&"f".repeat(48)).unwrap().selector(),
            u64::MAX,
            "the first 16 hex digits, big-endian"
        );
        assert!(!format!("{a:?}").contains(&a.as_str()[16..]));
        // A session keeps the secret half; the whole token comes back from it and the key.
        let v = a.verifier();
        assert!(v.matches(&a));
        assert!(!v.matches(&b));
        assert_eq!(v.token(a.selector()).as_str(), a.as_str());
        let forged = Token::parse(&format!("{}{}", &b.as_str()[..16], &a.as_str()[16..])).unwrap();
        assert!(
            v.matches(&forged),
            "the verifier alone; the room finds the session by selector"
        );
        assert_eq!(format!("{v:?}"), "Verifier(…)");
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        assert!(Token::parse("").is_none());
        assert!(Token::parse(&"a".repeat(47)).is_none());
        assert!(Token::parse(&"a".repeat(49)).is_none());
        assert!(Token::parse(&"A".repeat(48)).is_none());
        assert!(Token::parse(&"g".repeat(48)).is_none());
        assert!(Token::parse(&"0".repeat(48)).is_some());
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(3.0, t0);
        for _ in 0..3 {
            assert!(r.take(10.0, 3.0, t0).is_ok());
        }
        let wait = r.take(10.0, 3.0, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        // A tenth of a second later one more token is there, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(r.take(10.0, 3.0, t1).is_ok());
        assert!(r.take(10.0, 3.0, t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(r.take(10.0, 3.0, t2).is_ok());
        }
        assert!(r.take(10.0, 3.0, t2).is_err());
    }
}
