//! The verifier without a server: HS256 tokens minted here with `jsonwebtoken` (the kit's
//! minter), each way a token can be refused, and the key reload. RS256 and ES256 run against a
//! real server in `tests/it/auth.rs`, with keys `openssl` makes at test time.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tiny_http::{Header, TestRequest};

use super::*;
use crate::kit::jwt::{self, Minter};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-only";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("syncast-auth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn auth_with(name: &str, tweak: impl FnOnce(&mut Config)) -> (Auth, PathBuf) {
    let d = dir(name);
    let secret = d.join("secret");
    let mut file = SECRET.to_vec();
    file.push(b'\n');
    std::fs::write(&secret, file).unwrap();
    let mut config = Config {
        jwt_secret_file: Some(secret.clone()),
        ..Config::default()
    };
    tweak(&mut config);
    (Auth::new(&config).unwrap(), secret)
}

fn mint(claims: serde_json::Value) -> String {
    Minter::hs256(SECRET).unwrap().mint(&claims).unwrap()
}

fn in_an_hour(sub: &str) -> serde_json::Value {
    jwt::claims(sub, Duration::from_secs(3600))
}

#[test]
fn without_a_key_every_check_passes_and_with_one_a_token_is_needed() {
    let off = Auth::new(&Config::default()).unwrap();
    assert!(!off.on());
    let rq: Request = TestRequest::new().with_path("/sse/call/42").into();
    assert_eq!(off.check(&rq, &[], Need::Admin).unwrap().map(|_| ()), None);
    let (on, _) = auth_with("need", |_| {});
    assert!(on.on());
    assert_eq!(
        on.check(&rq, &[], Need::Subscribe("42")).unwrap_err(),
        Denied::Missing
    );
}

#[test]
fn a_good_token_verifies_and_grants_what_its_claims_say() {
    let (auth, _) = auth_with("good", |_| {});
    let mut claims = in_an_hour("42");
    claims["syncast"] = json!({"publish": ["team-*"]});
    let grant = auth.verify(&mint(claims)).unwrap();
    assert!(grant.may_subscribe("42") && grant.may_publish("team-1"));
    assert!(!grant.may_publish("42"));
    let token = mint(in_an_hour("42"));
    let rq: Request = TestRequest::new()
        .with_path("/sse/call/42")
        .with_header(Header::from_bytes("Authorization", format!("Bearer {token}")).unwrap())
        .into();
    assert!(auth.check(&rq, &[], Need::Subscribe("42")).is_ok());
    assert!(matches!(
        auth.check(&rq, &[], Need::Subscribe("43")),
        Err(Denied::Forbidden { .. })
    ));
    assert!(matches!(
        auth.check(&rq, &[], Need::Admin),
        Err(Denied::Forbidden { .. })
    ));
}

#[test]
fn every_bad_token_is_refused_with_its_reason() {
    let (auth, _) = auth_with("bad", |_| {});
    let now = jwt::now();
    let cases: Vec<(&str, String, Invalid)> = vec![
        ("garbage", "not a token".into(), Invalid::Malformed),
        ("two parts", "a.b".into(), Invalid::Malformed),
        (
            "expired",
            mint(json!({"sub": "42", "exp": now - 120})),
            Invalid::Expired,
        ),
        (
            "not yet valid",
            mint(json!({"sub": "42", "exp": now + 3600, "nbf": now + 600})),
            Invalid::NotYetValid,
        ),
        ("no exp", mint(json!({"sub": "42"})), Invalid::NoExpiry),
        (
            "wrong key",
            Minter::hs256(b"another secret of at least 32 bytes!!")
                .unwrap()
                .mint(&in_an_hour("42"))
                .unwrap(),
            Invalid::Signature,
        ),
        (
            "alg none",
            jwt::unsigned(&in_an_hour("42")),
            Invalid::Malformed,
        ),
        (
            "bad claims",
            mint(json!({"sub": "42", "exp": now + 60, "syncast": {"subscribe": "42"}})),
            Invalid::Claims,
        ),
    ];
    for (what, token, why) in cases {
        assert_eq!(auth.verify(&token).unwrap_err(), why, "{what}");
    }
    // A signature changed in its first character: that one carries six whole bits of the
    // signature, so any other letter still decodes (the last character of a 32-byte signature
    // carries four bits and two zero ones: changing it can make the base64 itself invalid, a
    // Malformed token, which made this test fail at random).
    let token = mint(in_an_hour("42"));
    let at = token.rfind('.').expect("three parts") + 1;
    let first = &token[at..at + 1];
    let changed = format!(
        "{}{}{}",
        &token[..at],
        if first == "A" { "B" } else { "A" },
        &token[at + 1..]
    );
    assert_eq!(auth.verify(&changed).unwrap_err(), Invalid::Signature);
}

#[test]
fn an_algorithm_without_a_key_is_refused() {
    // Only HS256 is configured: an RS256 header finds no key, whatever its signature.
    let (auth, _) = auth_with("alg", |_| {});
    let hs = mint(in_an_hour("42"));
    let rs_header = jwt::base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let forged = format!("{rs_header}.{}", hs.split_once('.').unwrap().1);
    assert_eq!(auth.verify(&forged).unwrap_err(), Invalid::Algorithm);
    let es_header = jwt::base64url(br#"{"alg":"HS512","typ":"JWT"}"#);
    let forged = format!("{es_header}.{}", hs.split_once('.').unwrap().1);
    assert_eq!(auth.verify(&forged).unwrap_err(), Invalid::Algorithm);
}

#[test]
fn audience_and_issuer_are_required_when_configured() {
    let (auth, _) = auth_with("aud", |c| {
        c.jwt_audience = Some("syncast".into());
        c.jwt_issuer = Some("https://id.example".into());
    });
    let mut claims = in_an_hour("42");
    // Both missing: either is named (jsonwebtoken checks its required claims in no set order).
    let both = auth.verify(&mint(claims.clone())).unwrap_err();
    assert!(
        matches!(both, Invalid::Audience | Invalid::Issuer),
        "{both:?}"
    );
    claims["iss"] = json!("https://id.example");
    assert_eq!(
        auth.verify(&mint(claims.clone())).unwrap_err(),
        Invalid::Audience
    );
    claims["iss"] = json!("https://other.example");
    claims["aud"] = json!("syncast");
    assert_eq!(
        auth.verify(&mint(claims.clone())).unwrap_err(),
        Invalid::Issuer
    );
    claims["iss"] = json!("https://id.example");
    assert!(auth.verify(&mint(claims.clone())).is_ok());
    claims["aud"] = json!(["other", "syncast"]);
    assert!(auth.verify(&mint(claims.clone())).is_ok());
    claims["aud"] = json!("other");
    assert_eq!(auth.verify(&mint(claims)).unwrap_err(), Invalid::Audience);
    // Without --jwt-audience an aud claim is ignored.
    let (plain, _) = auth_with("noaud", |_| {});
    let mut claims = in_an_hour("42");
    claims["aud"] = json!("anyone");
    assert!(plain.verify(&mint(claims)).is_ok());
}

#[test]
fn the_leeway_applies_to_exp_and_nbf() {
    let (auth, _) = auth_with("leeway", |c| c.jwt_leeway = Duration::from_secs(30));
    let now = jwt::now();
    assert!(auth
        .verify(&mint(json!({"sub": "42", "exp": now - 10})))
        .is_ok());
    assert!(auth
        .verify(&mint(
            json!({"sub": "42", "exp": now + 60, "nbf": now + 10})
        ))
        .is_ok());
    assert_eq!(
        auth.verify(&mint(json!({"sub": "42", "exp": now - 60})))
            .unwrap_err(),
        Invalid::Expired
    );
}

#[test]
fn a_reload_takes_a_good_key_and_keeps_the_old_one_when_the_file_is_bad() {
    let (auth, secret) = auth_with("reload", |_| {});
    let old = mint(in_an_hour("42"));
    let new_secret = b"a brand new secret that is long enough";
    std::fs::write(&secret, new_secret).unwrap();
    let r = auth.reload();
    assert_eq!((r.reloaded.len(), r.failed.len()), (1, 0), "{r:?}");
    let new = Minter::hs256(new_secret)
        .unwrap()
        .mint(&in_an_hour("42"))
        .unwrap();
    assert!(auth.verify(&new).is_ok());
    assert_eq!(auth.verify(&old).unwrap_err(), Invalid::Signature);
    // Too short now: the key stays what it was.
    std::fs::write(&secret, b"short").unwrap();
    let r = auth.reload();
    assert_eq!((r.reloaded.len(), r.failed.len()), (0, 1), "{r:?}");
    assert!(r.failed[0].contains("at least 32"), "{r:?}");
    assert!(auth.verify(&new).is_ok());
    std::fs::remove_file(&secret).unwrap();
    assert_eq!(auth.reload().failed.len(), 1);
    assert!(auth.verify(&new).is_ok());
}

#[test]
fn a_refusal_is_401_or_403_with_its_challenge_and_counted() {
    let metrics = Metrics::default();
    let rq: Request = TestRequest::new()
        .with_path("/sse/call/42?access_token=eyJsecret")
        .into();
    let header = |reply: &Reply| {
        reply
            .headers()
            .iter()
            .find(|h| h.field.equiv("WWW-Authenticate"))
            .map(|h| h.value.as_str().to_string())
    };
    let missing = refusal(&metrics, &rq, &Denied::Missing);
    assert_eq!(missing.status_code().0, 401);
    assert_eq!(
        header(&missing).as_deref(),
        Some("Bearer realm=\"syncast\"")
    );
    let expired = refusal(&metrics, &rq, &Denied::Invalid(Invalid::Expired));
    assert_eq!(
        header(&expired).as_deref(),
        Some("Bearer realm=\"syncast\", error=\"invalid_token\", error_description=\"expired\"")
    );
    let body = String::from_utf8(expired.into_reader().into_inner()).unwrap();
    assert_eq!(body, r#"{"error":"invalid token: expired"}"#);
    let forbidden = Denied::Forbidden {
        lacks: "x",
        sub: Some("u".into()),
    };
    let reply = refusal(&metrics, &rq, &forbidden);
    assert_eq!(reply.status_code().0, 403);
    assert!(header(&reply).unwrap().contains("insufficient_scope"));
    let text =
        std::sync::Arc::new(metrics).render(Default::default(), crate::metrics::Format::Prometheus);
    assert!(text.contains("syncast_rejected_total{reason=\"unauthorized\"} 2\n"));
    assert!(text.contains("syncast_rejected_total{reason=\"forbidden\"} 1\n"));
}
