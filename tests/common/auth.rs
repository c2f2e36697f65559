//! Tokens for the tests: an HS256 secret file (a test-only secret), tokens minted with
//! `jsonwebtoken` (the kit's minter), and RS256 / ES256 key pairs made by `openssl` at test time
//! (no private key is kept in the repository, and none means anything outside one test run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use syncast::kit::jwt::{self, Minter};

use super::unique;

/// The tests' HS256 secret (48 bytes; syncast needs at least 32).
pub const SECRET: &[u8] = b"test-only secret: never use it for anything else";

/// A fresh folder for key files.
pub fn key_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("syncast-keys-"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes [`SECRET`] and a line break (as `echo` would) into `dir/secret`.
pub fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("secret");
    let mut bytes = SECRET.to_vec();
    bytes.push(b'\n');
    std::fs::write(&path, bytes).unwrap();
    path
}

/// An HS256 token over `claims` with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    Minter::hs256(SECRET).unwrap().mint(claims).unwrap()
}

/// `{"sub": sub, "exp": in an hour}`.
pub fn claims(sub: &str) -> Value {
    jwt::claims(sub, Duration::from_secs(3600))
}

/// Claims for `sub` with a `syncast` object.
pub fn with_rights(sub: &str, rights: Value) -> Value {
    let mut c = claims(sub);
    c["syncast"] = rights;
    c
}

/// A token for the chat member `name` (its `name` claim), valid for an hour.
pub fn member(name: &str) -> String {
    let mut c = claims(&format!("user-{name}"));
    c["name"] = json!(name);
    hs256(&c)
}

/// An admin token.
pub fn admin() -> String {
    hs256(&with_rights("ops", json!({"admin": true})))
}

/// `Authorization: Bearer T`.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// A key pair made by `openssl`: the private key in PEM (for minting) and the public key's file
/// (for `--jwt-public-key-file`).
pub struct KeyPair {
    /// The private key, PEM.
    pub private_pem: Vec<u8>,
    /// The public key's PEM file.
    pub public_file: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (Debian package openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pair(kind: &str, genpkey: &[&str]) -> KeyPair {
    let dir = key_dir();
    let private = dir.join(format!("{kind}-private.pem"));
    let public = dir.join(format!("{kind}-public.pem"));
    let private_s = private.to_str().unwrap();
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", private_s]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    KeyPair {
        private_pem: std::fs::read(&private).unwrap(),
        public_file: public,
    }
}

/// An RSA 2048 key pair (RS256), made once per test process.
pub fn rsa() -> &'static KeyPair {
    static RSA: OnceLock<KeyPair> = OnceLock::new();
    RSA.get_or_init(|| {
        pair(
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        )
    })
}

/// A P-256 key pair (ES256), made once per test process.
pub fn ec() -> &'static KeyPair {
    static EC: OnceLock<KeyPair> = OnceLock::new();
    EC.get_or_init(|| {
        pair(
            "ec",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    })
}

/// A second key pair of the kind of `alg` (`RS256` or `ES256`), made anew: a key the server
/// does not know.
pub fn another(alg: &str) -> KeyPair {
    match alg {
        "RS256" => pair(
            "rsa2",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        _ => pair(
            "ec2",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
    }
}

/// A P-384 key pair: an EC key syncast must refuse (ES256 is P-256 only).
pub fn ec384() -> KeyPair {
    pair(
        "ec384",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    )
}
