//! The verification keys: read from their files at start and again on `SIGHUP`, each checked
//! before it replaces the one in use.
//!
//! - `--jwt-secret-file`: the HS256 secret, the file's bytes with a trailing line break (`\n` or
//!   `\r\n`) removed; at least [`MIN_SECRET`] bytes.
//! - `--jwt-public-key-file`: a PEM public key, RSA (`RS256`) or EC on P-256 (`ES256`), as
//!   `openssl pkey -pubout` writes it (`BEGIN PUBLIC KEY`; `BEGIN RSA PUBLIC KEY` too).
//!
//! Parsing the PEM is `jsonwebtoken`'s; all this file decides is which algorithm a key is for.

use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey};

/// The shortest HS256 secret accepted: 256 bits, the size of the hash (RFC 7518, 3.2).
pub(crate) const MIN_SECRET: usize = 32;

/// Which key file: the flag that names it, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFile {
    /// `--jwt-secret-file`.
    Secret,
    /// `--jwt-public-key-file`.
    PublicKey,
}

impl KeyFile {
    /// The flag, e.g. `--jwt-secret-file`.
    pub fn flag(self) -> &'static str {
        match self {
            KeyFile::Secret => "--jwt-secret-file",
            KeyFile::PublicKey => "--jwt-public-key-file",
        }
    }
}

/// Why a key file cannot be used. Never carries the key's bytes.
#[derive(Debug)]
pub enum KeyError {
    /// The file could not be read.
    Read {
        /// Which file.
        file: KeyFile,
        /// Its path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The secret is shorter than 32 bytes.
    TooShort {
        /// Its path.
        path: PathBuf,
        /// How many bytes it has (after the trailing line break is removed).
        len: usize,
    },
    /// Not a PEM public key of a kind syncast accepts.
    NotAKey {
        /// Its path.
        path: PathBuf,
        /// What was wrong.
        why: &'static str,
    },
}

impl KeyError {
    /// Which key file the error is about.
    pub fn file(&self) -> KeyFile {
        match self {
            KeyError::Read { file, .. } => *file,
            KeyError::TooShort { .. } => KeyFile::Secret,
            KeyError::NotAKey { .. } => KeyFile::PublicKey,
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Read { file, path, error } => {
                write!(
                    f,
                    "{} {}: cannot read: {error}",
                    file.flag(),
                    path.display()
                )
            }
            KeyError::TooShort { path, len } => write!(
                f,
                "--jwt-secret-file {}: the secret is {len} bytes; at least {MIN_SECRET} are needed \
                 (e.g. head -c 48 /dev/urandom | base64 > FILE)",
                path.display()
            ),
            KeyError::NotAKey { path, why } => {
                write!(f, "--jwt-public-key-file {}: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A key ready to verify tokens of one algorithm.
#[derive(Clone)]
pub(crate) struct Key {
    /// The one algorithm this key verifies.
    pub(crate) alg: Algorithm,
    /// The key itself.
    pub(crate) key: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        write!(f, "Key({:?})", self.alg)
    }
}

fn read(file: KeyFile, path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|error| KeyError::Read {
        file,
        path: path.to_path_buf(),
        error,
    })
}

/// The HS256 key in `path`: its bytes less one trailing `\n` or `\r\n`.
pub(crate) fn secret(path: &Path) -> Result<Key, KeyError> {
    let mut bytes = read(KeyFile::Secret, path)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.len() < MIN_SECRET {
        return Err(KeyError::TooShort {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    let key = DecodingKey::from_secret(&bytes).map_err(|_| KeyError::TooShort {
        path: path.to_path_buf(),
        len: bytes.len(),
    })?;
    // The copy read from the file is overwritten before it is freed (the key holds its own).
    bytes.iter_mut().for_each(|b| *b = 0);
    Ok(Key {
        alg: Algorithm::HS256,
        key,
    })
}

/// The RS256 or ES256 key in the PEM file `path`.
pub(crate) fn public_key(path: &Path) -> Result<Key, KeyError> {
    let pem = read(KeyFile::PublicKey, path)?;
    let not = |why| KeyError::NotAKey {
        path: path.to_path_buf(),
        why,
    };
    let text = std::str::from_utf8(&pem).map_err(|_| not("not a PEM file (not text)"))?;
    if text.contains("PRIVATE KEY-----") {
        // Refused even though the public half could be derived: a private key does not belong on
        // a server that only verifies.
        return Err(not(
            "this is a private key: give the public one (openssl pkey -in KEY -pubout)",
        ));
    }
    if !text.contains("-----BEGIN ") {
        return Err(not("not a PEM file (no -----BEGIN line)"));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            alg: Algorithm::RS256,
            key,
        });
    }
    let key = DecodingKey::from_ec_pem(&pem)
        .map_err(|_| not("not an RSA or EC public key in PEM (RS256 or ES256)"))?;
    // The EC key's point as SEC1 bytes: 65 (uncompressed) or 33 (compressed) on P-256. Any other
    // curve would fail every ES256 verification, so it is refused here with its reason.
    match key.try_get_as_bytes().map(<[u8]>::len) {
        Ok(65 | 33) => Ok(Key {
            alg: Algorithm::ES256,
            key,
        }),
        _ => Err(not(
            "an EC key on another curve than P-256: ES256 needs P-256 (prime256v1)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("syncast-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_secret_loses_its_trailing_line_break_and_must_be_32_bytes() {
        let ok = file("ok", &[b'x'; 32]);
        assert_eq!(secret(&ok).unwrap().alg, Algorithm::HS256);
        // 31 bytes and a line break: too short once the break is trimmed.
        let mut short = vec![b'x'; 31];
        short.push(b'\n');
        let e = secret(&file("short", &short)).unwrap_err();
        assert!(matches!(e, KeyError::TooShort { len: 31, .. }), "{e}");
        assert!(e.to_string().contains("at least 32"), "{e}");
        let mut crlf = vec![b'y'; 32];
        crlf.extend_from_slice(b"\r\n");
        assert!(secret(&file("crlf", &crlf)).is_ok());
        let missing = secret(Path::new("/nonexistent/syncast-secret")).unwrap_err();
        assert!(missing
            .to_string()
            .starts_with("--jwt-secret-file /nonexistent/syncast-secret: cannot read:"));
    }

    #[test]
    fn a_public_key_file_must_be_a_pem_public_key() {
        for (name, text, why) in [
            ("empty", "", "no -----BEGIN"),
            ("junk", "hello", "no -----BEGIN"),
            (
                "private",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "private key",
            ),
            (
                "bad",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "RS256 or ES256",
            ),
        ] {
            let e = public_key(&file(name, text.as_bytes())).unwrap_err();
            assert!(e.to_string().contains(why), "{name}: {e}");
            assert_eq!(e.file(), KeyFile::PublicKey);
        }
    }
}
