//! Subscriber (and publisher) authorization by JWT on the public listener (docs/access-control.md),
//! through the real binary: each key type and algorithm, each place a token is read from, every
//! reason a token is refused, channel patterns, a stream ended at its token's `exp`, startup
//! errors, and publishing with a JWT.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::auth_support::{connected, fails_to_start, live, refused, run, wait_connected};
use crate::support::binary::Redisse;
use crate::support::sse::client;
use crate::support::{PATIENCE, SseStream};

const SECRET: &str = "a test secret that is long enough for HS512 too, 64 bytes and more!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims granting `subscribe`, valid for ten minutes.
fn grant(subscribe: &[&str]) -> Value {
    json!({"redisse": {"subscribe": subscribe}, "exp": now() + 600})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign a token")
}

/// An HS256 token with [`SECRET`].
fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The binary verifying HS256 tokens with [`SECRET`].
fn hmac_server(extra: &[&str]) -> Redisse {
    let mut args = vec!["--jwt-secret", SECRET, "--jwt-algorithm", "HS256"];
    args.extend_from_slice(extra);
    Redisse::start(&args)
}

/// base64url without padding (for hand-built tokens).
fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A key pair as PKCS#8 private PEM and SPKI public PEM.
struct KeyPair {
    private_pem: String,
    public_pem: String,
}

/// One RSA key for the whole test binary (generating one takes a moment), with `openssl`.
fn rsa() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private.pem");
        let public = dir.path().join("public.pem");
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap_or_else(|e| {
                    panic!("these tests need the `openssl` command to make an RSA key: {e}")
                });
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (private_s, public_s) = (private.to_str().unwrap(), public.to_str().unwrap());
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            private_s,
        ]);
        openssl(&["pkey", "-in", private_s, "-pubout", "-out", public_s]);
        KeyPair {
            private_pem: std::fs::read_to_string(&private).unwrap(),
            public_pem: std::fs::read_to_string(&public).unwrap(),
        }
    })
}

/// A fresh P-256, P-384 or Ed25519 key, with rcgen.
fn rcgen_key(alg: &'static rcgen::SignatureAlgorithm) -> KeyPair {
    let key = rcgen::KeyPair::generate_for(alg).expect("generate a key");
    KeyPair {
        private_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    }
}

fn encoding_key(alg: Algorithm, key: &KeyPair) -> EncodingKey {
    let pem = key.private_pem.as_bytes();
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
    .expect("a PKCS#8 private key")
}

/// The binary verifying `alg` tokens with `public_pem`, written to a file.
fn key_server(alg: &str, public_pem: &str, extra: &[&str]) -> Redisse {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("public.pem");
    std::fs::write(&path, public_pem).unwrap();
    let mut args = vec![
        "--jwt-public-key",
        path.to_str().unwrap(),
        "--jwt-algorithm",
        alg,
    ];
    args.extend_from_slice(extra);
    // The key is read at startup; the directory may go afterwards.
    Redisse::start(&args)
}

/// A stream with `token` as bearer on `ch` is served and gets `ch`'s events.
async fn serves_with(r: &Redisse, token: &str) {
    let auth = bearer(token);
    let mut s = live(r, "/?ch", &[("authorization", &auth)]).await;
    r.publish("ch", "hello".into()).await;
    assert_eq!(s.next().await.data, "hello");
    drop(s);
    wait_connected(r, 0).await;
}

/// `ours` is accepted; a token of the same algorithm with another key is refused.
async fn accepts_only_its_key(alg: Algorithm, name: &str, ours: &KeyPair, other: &KeyPair) {
    let r = key_server(name, &ours.public_pem, &[]);
    serves_with(&r, &sign(alg, &encoding_key(alg, ours), &grant(&["ch"]))).await;
    let forged = sign(alg, &encoding_key(alg, other), &grant(&["ch"]));
    refused(&r, "/?ch", &[("authorization", &bearer(&forged))], 401).await;
}

// --- Each key type and algorithm -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_hs384_and_hs512_tokens_are_accepted_with_the_secret() {
    for (alg, name) in [
        (Algorithm::HS256, "HS256"),
        (Algorithm::HS384, "HS384"),
        (Algorithm::HS512, "HS512"),
    ] {
        let r = Redisse::start(&["--jwt-secret", SECRET, "--jwt-algorithm", name]);
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        serves_with(&r, &sign(alg, &key, &grant(&["ch"]))).await;
        let wrong = EncodingKey::from_secret(b"another secret");
        let forged = sign(alg, &wrong, &grant(&["ch"]));
        refused(&r, "/?ch", &[("authorization", &bearer(&forged))], 401).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_are_accepted_with_an_rsa_public_key() {
    let key = rsa();
    let r = key_server("RS256", &key.public_pem, &[]);
    let token = sign(
        Algorithm::RS256,
        &encoding_key(Algorithm::RS256, key),
        &grant(&["ch"]),
    );
    serves_with(&r, &token).await;
    // A PS256 token from the same key is another algorithm: refused.
    let ps = sign(
        Algorithm::PS256,
        &encoding_key(Algorithm::PS256, key),
        &grant(&["ch"]),
    );
    refused(&r, "/?ch", &[("authorization", &bearer(&ps))], 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ps256_tokens_are_accepted_with_an_rsa_public_key() {
    let key = rsa();
    let r = key_server("PS256", &key.public_pem, &[]);
    let token = sign(
        Algorithm::PS256,
        &encoding_key(Algorithm::PS256, key),
        &grant(&["ch"]),
    );
    serves_with(&r, &token).await;
    let rs = sign(
        Algorithm::RS256,
        &encoding_key(Algorithm::RS256, key),
        &grant(&["ch"]),
    );
    refused(&r, "/?ch", &[("authorization", &bearer(&rs))], 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens_are_accepted_with_a_p256_public_key() {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    accepts_only_its_key(Algorithm::ES256, "ES256", &rcgen_key(alg), &rcgen_key(alg)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es384_tokens_are_accepted_with_a_p384_public_key() {
    let alg = &rcgen::PKCS_ECDSA_P384_SHA384;
    accepts_only_its_key(Algorithm::ES384, "ES384", &rcgen_key(alg), &rcgen_key(alg)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_tokens_are_accepted_with_an_ed25519_public_key() {
    let alg = &rcgen::PKCS_ED25519;
    accepts_only_its_key(Algorithm::EdDSA, "EdDSA", &rcgen_key(alg), &rcgen_key(alg)).await;
}

// --- Where the token is read from --------------------------------------------------------------

/// A place to put the token: its name, the path and query, the request headers.
type Place<'a> = (&'a str, String, Vec<(&'a str, String)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_read_from_the_header_the_default_cookie_or_the_query() {
    let r = hmac_server(&[]);
    let token = hs(&grant(&["ch"]));
    let places: [Place<'_>; 3] = [
        (
            "bearer",
            "/?ch".into(),
            vec![("authorization", bearer(&token))],
        ),
        (
            "default cookie",
            "/?ch".into(),
            vec![("cookie", format!("a=1; redisseAuthorization={token}; b=2"))],
        ),
        ("query", format!("/?ch&authorization={token}"), vec![]),
    ];
    for (place, path, headers) in places {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut s = live(&r, &path, &headers).await;
        r.publish("ch", place.into()).await;
        assert_eq!(s.next().await.data, place, "token in the {place}");
        drop(s);
        wait_connected(&r, 0).await;
    }
    // Without a token anywhere: 401.
    refused(&r, "/?ch", &[], 401).await;
    // Another cookie name is not read.
    let other = format!("session={token}");
    refused(&r, "/?ch", &[("cookie", &other)], 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_jwt_cookie_is_read_and_the_default_one_no_longer() {
    let r = hmac_server(&["--jwt-cookie", "session"]);
    let token = hs(&grant(&["ch"]));
    let cookie = format!("session={token}");
    let mut s = live(&r, "/?ch", &[("cookie", &cookie)]).await;
    r.publish("ch", "via session".into()).await;
    assert_eq!(s.next().await.data, "via session");
    drop(s);
    wait_connected(&r, 0).await;
    let default = format!("redisseAuthorization={token}");
    refused(&r, "/?ch", &[("cookie", &default)], 401).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_token_is_never_a_channel() {
    let r = hmac_server(&[]);
    // Naming no channel but the token: the claim's names, not a channel named by the token
    // (which the claim would not cover: 403).
    let token = hs(&grant(&["ch"]));
    let mut s = live(&r, &format!("/?authorization={token}"), &[]).await;
    r.publish("ch", "claimed".into()).await;
    assert_eq!(s.next().await.data, "claimed");
    drop(s);
    wait_connected(&r, 0).await;
    // A token covering every channel: the stream listens to `ch` only, not to the token.
    let any = hs(&grant(&["*"]));
    let mut s = live(&r, &format!("/?ch&authorization={any}"), &[]).await;
    r.publish(&any, "to the token".into()).await;
    r.publish("ch", "to ch".into()).await;
    assert_eq!(s.next().await.data, "to ch");
    s.expect_silence(Duration::from_millis(300)).await;
}

// --- Refused tokens ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_refused_with_401_and_no_stream() {
    let r = hmac_server(&[]);
    let t = now();
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(grant(&["ch"]).to_string().as_bytes())
    );
    let es = rcgen_key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let cases: Vec<(&str, String)> = [
        (
            "expired",
            hs(&json!({"redisse": {"subscribe": ["ch"]}, "exp": t - 60})),
        ),
        (
            "not yet valid",
            hs(&json!({"redisse": {"subscribe": ["ch"]}, "exp": t + 600, "nbf": t + 60})),
        ),
        (
            "wrong secret",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"not the secret"),
                &grant(&["ch"]),
            ),
        ),
        ("alg none", alg_none),
        (
            "ES256 when HS256 is configured",
            sign(
                Algorithm::ES256,
                &encoding_key(Algorithm::ES256, &es),
                &grant(&["ch"]),
            ),
        ),
        (
            "HS512 when HS256 is configured",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &grant(&["ch"]),
            ),
        ),
        ("garbage", "not.a.token".into()),
    ]
    .into_iter()
    .collect();
    for (case, token) in &cases {
        let auth = bearer(token);
        let body = refused(&r, "/?ch", &[("authorization", &auth)], 401).await;
        assert!(!body.is_empty(), "{case}: a 401 says why");
        // The same token in the cookie and in the query: refused too.
        let cookie = format!("redisseAuthorization={token}");
        refused(&r, "/?ch", &[("cookie", &cookie)], 401).await;
        refused(&r, &format!("/?ch&authorization={token}"), &[], 401).await;
    }
    // The server does accept a good token: the refusals are the tokens'.
    serves_with(&r, &hs(&grant(&["ch"]))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exp_and_nbf_have_a_few_seconds_of_leeway_and_exp_is_optional() {
    let r = hmac_server(&[]);
    let t = now();
    for (case, claims) in [
        (
            "expired 2 s ago",
            json!({"redisse": {"subscribe": ["ch"]}, "exp": t - 2}),
        ),
        (
            "valid in 2 s",
            json!({"redisse": {"subscribe": ["ch"]}, "exp": t + 600, "nbf": t + 2}),
        ),
        ("without exp", json!({"redisse": {"subscribe": ["ch"]}})),
    ] {
        let auth = bearer(&hs(&claims));
        let s = SseStream::open(&r.url("/?ch"), &[("authorization", &auth)]).await;
        assert_eq!(s.status, 200, "{case}");
        drop(s);
        wait_connected(&r, 0).await;
    }
    for (case, claims) in [
        (
            "expired 20 s ago",
            json!({"redisse": {"subscribe": ["ch"]}, "exp": t - 20}),
        ),
        (
            "valid in 20 s",
            json!({"redisse": {"subscribe": ["ch"]}, "exp": t + 600, "nbf": t + 20}),
        ),
    ] {
        let auth = bearer(&hs(&claims));
        let body = refused(&r, "/?ch", &[("authorization", &auth)], 401).await;
        assert!(!body.is_empty(), "{case}");
    }
    // A token without exp streams events.
    serves_with(&r, &hs(&json!({"redisse": {"subscribe": ["ch"]}}))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rs256_to_hs256_switch_is_refused() {
    let key = rsa();
    let r = key_server("RS256", &key.public_pem, &[]);
    // The classic confusion: HS256 with the public key's PEM as the HMAC secret.
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(key.public_pem.as_bytes()),
        &grant(&["ch"]),
    );
    refused(&r, "/?ch", &[("authorization", &bearer(&forged))], 401).await;
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(grant(&["ch"]).to_string().as_bytes())
    );
    refused(&r, "/?ch", &[("authorization", &bearer(&alg_none))], 401).await;
    serves_with(
        &r,
        &sign(
            Algorithm::RS256,
            &encoding_key(Algorithm::RS256, key),
            &grant(&["ch"]),
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audience_is_required_and_checked_when_configured() {
    let r = hmac_server(&["--jwt-audience", "my-app"]);
    let exp = now() + 600;
    let with = |aud: Value| hs(&json!({"redisse": {"subscribe": ["ch"]}, "exp": exp, "aud": aud}));
    serves_with(&r, &with(json!("my-app"))).await;
    for token in [with(json!("another-app")), hs(&grant(&["ch"]))] {
        refused(&r, "/?ch", &[("authorization", &bearer(&token))], 401).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_is_required_and_checked_when_configured() {
    let r = hmac_server(&["--jwt-issuer", "https://auth.example"]);
    let exp = now() + 600;
    let with = |iss: &str| hs(&json!({"redisse": {"subscribe": ["ch"]}, "exp": exp, "iss": iss}));
    serves_with(&r, &with("https://auth.example")).await;
    for token in [with("https://evil.example"), hs(&grant(&["ch"]))] {
        refused(&r, "/?ch", &[("authorization", &bearer(&token))], 401).await;
    }
}

// --- Channels ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_outside_the_claim_is_403() {
    let r = hmac_server(&[]);
    let auth = bearer(&hs(&grant(&["a", "b"])));
    for path in ["/?c", "/?a&c", "/?c&b"] {
        refused(&r, path, &[("authorization", &auth)], 403).await;
    }
    let mut s = live(&r, "/?b&a", &[("authorization", &auth)]).await;
    r.publish("a", "1".into()).await;
    r.publish("b", "2".into()).await;
    assert_eq!(s.next().await.data, "1");
    assert_eq!(s.next().await.data, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_patterns_need_one_more_character_over_http() {
    let r = hmac_server(&[]);
    let auth = bearer(&hs(&grant(&["user.42.*"])));
    for path in ["/?user.42", "/?user.42.", "/?user.420", "/?user.4"] {
        refused(&r, path, &[("authorization", &auth)], 403).await;
    }
    let mut s = live(
        &r,
        "/?user.42.x&user.42.feed.more",
        &[("authorization", &auth)],
    )
    .await;
    r.publish("user.42.x", "x".into()).await;
    r.publish("user.42.feed.more", "more".into()).await;
    assert_eq!(s.next().await.data, "x");
    assert_eq!(s.next().await.data, "more");
    drop(s);
    wait_connected(&r, 0).await;
    // `*` alone covers every channel.
    let any = bearer(&hs(&grant(&["*"])));
    let mut s = live(&r, "/?anything&user.420", &[("authorization", &any)]).await;
    r.publish("user.420", "any".into()).await;
    assert_eq!(s.next().await.data, "any");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_no_channel_gets_the_claims_exact_names() {
    let r = hmac_server(&[]);
    let auth = bearer(&hs(&grant(&["a", "p.*", "b"])));
    let mut s = live(&r, "/", &[("authorization", &auth)]).await;
    for channel in ["a", "p.x", "c", "b", "p.y"] {
        r.publish(channel, channel.into()).await;
    }
    assert_eq!(s.next().await.data, "a");
    assert_eq!(s.next().await.data, "b");
    s.expect_silence(Duration::from_millis(300)).await;
}

// --- Expiry of an open stream ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_with_retry_at_the_first_heartbeat_after_exp() {
    let r = hmac_server(&["--heartbeat", "0.2"]);
    let exp = now() + 2;
    let auth = bearer(&hs(&json!({"redisse": {"subscribe": ["ch"]}, "exp": exp})));
    let mut s = live(&r, "/?ch", &[("authorization", &auth)]).await;
    let opened = Instant::now();
    r.publish("ch", "before exp".into()).await;
    assert_eq!(s.next().await.data, "before exp");
    let rest = s.until_closed(Duration::from_secs(6)).await;
    let elapsed = opened.elapsed();
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert!(
        rest.last().is_some_and(|e| e.retry.is_some()),
        "the stream ends with a retry: frame: {rest:?}; raw: {:?}",
        String::from_utf8_lossy(&s.raw)
    );
    assert!(
        end.as_secs_f64() >= exp as f64,
        "ended before exp: {end:?} < {exp}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "ended {elapsed:?} after opening"
    );
    // Heartbeats came before the end (the stream was alive until exp).
    assert!(!s.comments.is_empty(), "heartbeats before exp");
    wait_connected(&r, 0).await;
}

// --- Startup errors ----------------------------------------------------------------------------

#[tokio::test]
async fn a_key_without_an_algorithm_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("public.pem");
    std::fs::write(&path, &rcgen_key(&rcgen::PKCS_ED25519).public_pem).unwrap();
    let err = fails_to_start(&["--jwt-public-key", path.to_str().unwrap()]).await;
    assert!(err.contains("--jwt-algorithm"), "{err}");
    let err = fails_to_start(&["--jwt-secret", SECRET]).await;
    assert!(err.contains("--jwt-algorithm"), "{err}");
    // And an algorithm without a key.
    let err = fails_to_start(&["--jwt-algorithm", "HS256"]).await;
    assert!(err.contains("--jwt-secret"), "{err}");
}

#[tokio::test]
async fn an_unknown_algorithm_is_a_startup_error() {
    // PS384 and PS512 are not in the list of accepted algorithms either.
    for alg in ["HS999", "none", "hs256x", "PS384", "PS512"] {
        let err = fails_to_start(&["--jwt-secret", SECRET, "--jwt-algorithm", alg]).await;
        assert!(
            err.contains(alg) && err.to_lowercase().contains("algorithm"),
            "{alg}: {err}"
        );
    }
}

#[tokio::test]
async fn an_asymmetric_algorithm_with_a_secret_is_a_startup_error() {
    let err = fails_to_start(&["--jwt-secret", SECRET, "--jwt-algorithm", "RS256"]).await;
    assert!(err.contains("RS256") && err.contains("public key"), "{err}");
    // And the other way round: HS256 with a key file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("public.pem");
    std::fs::write(&path, &rcgen_key(&rcgen::PKCS_ED25519).public_pem).unwrap();
    let err = fails_to_start(&[
        "--jwt-public-key",
        path.to_str().unwrap(),
        "--jwt-algorithm",
        "HS256",
    ])
    .await;
    assert!(err.contains("HS256") && err.contains("secret"), "{err}");
}

#[tokio::test]
async fn jwt_and_the_auth_callback_together_are_a_startup_error() {
    let err = fails_to_start(&[
        "--jwt-secret",
        SECRET,
        "--jwt-algorithm",
        "HS256",
        "--auth-callback",
        "http://127.0.0.1:9/auth",
    ])
    .await;
    assert!(err.contains("one subscriber authorization mode"), "{err}");
}

#[tokio::test]
async fn an_unreadable_or_garbage_public_key_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = fails_to_start(&[
        "--jwt-public-key",
        missing.to_str().unwrap(),
        "--jwt-algorithm",
        "RS256",
    ])
    .await;
    assert!(
        err.contains("--jwt-public-key") && err.contains("missing.pem"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a key\n").unwrap();
    for alg in ["RS256", "ES256", "EdDSA"] {
        let err = fails_to_start(&[
            "--jwt-public-key",
            garbage.to_str().unwrap(),
            "--jwt-algorithm",
            alg,
        ])
        .await;
        assert!(
            err.contains("public key") && err.contains("PEM"),
            "{alg}: {err}"
        );
    }
    // A valid key of another type than the algorithm's.
    let ed = dir.path().join("ed.pem");
    std::fs::write(&ed, &rcgen_key(&rcgen::PKCS_ED25519).public_pem).unwrap();
    let err = fails_to_start(&[
        "--jwt-public-key",
        ed.to_str().unwrap(),
        "--jwt-algorithm",
        "RS256",
    ])
    .await;
    assert!(err.contains("RSA"), "{err}");
}

// --- Publishing with a JWT on the public listener ----------------------------------------------

async fn post(url: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut req = client().post(url).body(body.to_owned());
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let res = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("an answer in time")
        .expect("publish request");
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

fn publisher(publish: &[&str], exp: u64) -> String {
    hs(&json!({"redisse": {"publish": publish}, "exp": exp}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_covering_the_channel_publishes_on_the_public_listener() {
    let r = hmac_server(&[]);
    let sub = bearer(&hs(&grant(&["*"])));
    let mut s = live(&r, "/?news.1&other", &[("authorization", &sub)]).await;
    let exp = now() + 600;
    let ok = bearer(&publisher(&["news.*"], exp));
    let (status, body) = post(&r.url("/publish/news.1"), Some(&ok), "published").await;
    assert_eq!(status, 200, "{body}");
    let id: Value = serde_json::from_str(&body).expect("JSON");
    assert!(id["id"].as_u64().is_some(), "{body}");
    let e = s.next().await;
    assert_eq!(e.data, "published");
    assert_eq!(e.id.as_deref(), Some(id["id"].to_string().as_str()));
    // Valid, not covering: 403 (a subscribe claim does not let one publish).
    for token in [publisher(&["news.*"], exp), hs(&grant(&["other"]))] {
        let (status, body) = post(&r.url("/publish/other"), Some(&bearer(&token)), "x").await;
        assert_eq!(status, 403, "{body}");
    }
    // Expired, invalid or missing: 401.
    let expired = bearer(&publisher(&["news.*"], now() - 60));
    let forged = bearer(&sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"wrong"),
        &json!({"redisse": {"publish": ["news.*"]}}),
    ));
    for auth in [Some(expired.as_str()), Some(forged.as_str()), None] {
        let (status, body) = post(&r.url("/publish/news.1"), auth, "refused").await;
        assert_eq!(status, 401, "{auth:?}: {body}");
    }
    // Nothing refused was published.
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_publish_token_too_either_credential_suffices() {
    let r = hmac_server(&["--publish-token", "static-token"]);
    let jwt = bearer(&publisher(&["ch"], now() + 600));
    for auth in ["Bearer static-token", jwt.as_str()] {
        let (status, body) = post(&r.url("/publish/ch"), Some(auth), "x").await;
        assert_eq!(status, 200, "{auth}: {body}");
    }
    let (status, _) = post(&r.url("/publish/ch"), Some("Bearer wrong-token"), "x").await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redisse_publish_with_a_jwt_as_token_publishes_through_the_public_listener() {
    let r = hmac_server(&[]);
    let sub = bearer(&hs(&grant(&["ch"])));
    let mut s = live(&r, "/?ch", &[("authorization", &sub)]).await;
    let base = r.url("");
    let token = publisher(&["ch"], now() + 600);
    let (ok, stdout, stderr) = run(&[
        "publish",
        "ch",
        "from the cli",
        "--server",
        &base,
        "--token",
        &token,
    ])
    .await;
    assert!(ok, "{stderr}");
    let id: u64 = stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{stdout:?}"));
    let e = s.next().await;
    assert_eq!(e.data, "from the cli");
    assert_eq!(e.id, Some(id.to_string()));
    // A token that does not cover the channel fails, with a non-zero exit.
    let other = publisher(&["elsewhere"], now() + 600);
    let (ok, _, stderr) = run(&[
        "publish", "ch", "refused", "--server", &base, "--token", &other,
    ])
    .await;
    assert!(!ok, "published without a covering token");
    assert!(stderr.contains("403"), "{stderr}");
    s.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(connected(&r).await, 1);
}
