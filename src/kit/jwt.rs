//! Minting tokens for a syncast server with auth on: the stress tool's and the bench's simulated
//! clients and the tests. Signing is `jsonwebtoken`'s; the one thing written here is the
//! unsigned `alg: none` token the tests must see refused, which no library makes.
//!
//! ```
//! let minter = syncast::kit::jwt::Minter::hs256(&[7u8; 32]).unwrap();
//! let claims = syncast::kit::jwt::claims("42", std::time::Duration::from_secs(60));
//! let token = minter.mint(&claims).unwrap();
//! assert_eq!(token.split('.').count(), 3);
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// Signs tokens with one key.
pub struct Minter {
    alg: Algorithm,
    key: EncodingKey,
}

impl Minter {
    /// HS256 with `secret` (the bytes syncast reads from `--jwt-secret-file`, without the
    /// trailing line break).
    pub fn hs256(secret: &[u8]) -> Result<Minter, String> {
        Ok(Minter {
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret).map_err(|e| e.to_string())?,
        })
    }

    /// HS256 with the secret in `path`, read as syncast reads it (one trailing `\n` or `\r\n`
    /// dropped).
    pub fn hs256_file(path: &std::path::Path) -> Result<Minter, String> {
        let mut bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Minter::hs256(&bytes)
    }

    /// RS256 with an RSA private key in PEM.
    pub fn rs256(private_pem: &[u8]) -> Result<Minter, String> {
        Ok(Minter {
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_pem(private_pem).map_err(|e| e.to_string())?,
        })
    }

    /// ES256 with a P-256 private key in PEM (PKCS#8, as `openssl genpkey` writes it).
    pub fn es256(private_pem: &[u8]) -> Result<Minter, String> {
        Ok(Minter {
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_pem(private_pem).map_err(|e| e.to_string())?,
        })
    }

    /// A signed token carrying `claims`.
    pub fn mint(&self, claims: &Value) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key).map_err(|e| e.to_string())
    }
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `{"sub": sub, "exp": now + ttl}`: add `name` or a `syncast` object to it as needed.
pub fn claims(sub: &str, ttl: Duration) -> Value {
    json!({ "sub": sub, "exp": now() + ttl.as_secs() })
}

/// The unsigned token `header.payload.` with `{"alg":"none"}` (RFC 7519, 6.1): what an attacker
/// sends hoping the server skips the signature.
pub fn unsigned(claims: &Value) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64url(claims.to_string().as_bytes());
    format!("{header}.{payload}.")
}

/// Base64url without padding (RFC 4648, 5).
pub fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_test_vectors_without_padding() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(plain.as_bytes()), coded, "{plain:?}");
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
