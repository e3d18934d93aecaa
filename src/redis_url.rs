//! What a Redis URL says, before any client is built: whether it asks for TLS, and how logs
//! name the server without its password.
//!
//! The description comes from the Redis client's own parsing of the URL (scheme, user, host,
//! port, database), so that no hand-written redaction can miss a password in a form it does
//! not know (`unix:///path?pass=...`, a percent-encoded `@`). Without the `redis` feature the
//! URL is never used, and its scheme alone names it.

/// Whether `url` asks for TLS (`rediss://`, or the client's other name for it, `valkeys://`).
pub(crate) fn is_tls_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
    })
}

/// Whether a Sentinel setup speaks TLS anywhere: a `rediss://` primary (`master`, a name or a
/// URL) or sentinel.
pub(crate) fn sentinel_uses_tls(master: &str, sentinels: &[String]) -> bool {
    is_tls_url(master) || sentinels.iter().any(|s| is_tls_url(s))
}

/// How logs name the Redis at `url`: from the client's own parsing of the URL, its scheme,
/// user, host, port and database, never its password: `redis://alice@10.0.0.1:6379/0`,
/// `rediss://cache.example.com:6380/0`, `unix:///run/redis.sock (db 0)`.
#[cfg(feature = "redis")]
pub(crate) fn describe(url: &str) -> String {
    use redis::{ConnectionAddr, IntoConnectionInfo};

    let Ok(info) = url.into_connection_info() else {
        return "<an invalid URL>".to_owned();
    };
    let settings = info.redis_settings();
    let (db, user) = (settings.db(), settings.username());
    let tcp = |scheme: &str, host: &str, port: u16, fragment: &str| {
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!("{scheme}://{user}{host}:{port}/{db}{fragment}")
    };
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => tcp("redis", host, *port, ""),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => tcp(
            "rediss",
            host,
            *port,
            if *insecure { "#insecure" } else { "" },
        ),
        ConnectionAddr::Unix(path) => match user {
            Some(user) => format!("unix://{} (db {db}, user {user})", path.display()),
            None => format!("unix://{} (db {db})", path.display()),
        },
        // A kind of address a later client version adds: its own display, which is the
        // address alone.
        other => format!("{other} (db {db})"),
    }
}

/// How logs name the primary of a Sentinel setting: its name, or its URL described as
/// [`describe`] does (never its password).
pub(crate) fn describe_master(master: &str) -> String {
    if master.contains("://") {
        describe(master)
    } else {
        master.to_owned()
    }
}

/// How logs name the Redis at `url` in a build without the Redis client: by its scheme.
#[cfg(not(feature = "redis"))]
pub(crate) fn describe(url: &str) -> String {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme)
        .filter(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+'))
        .unwrap_or("?");
    format!("{scheme}://... (not built in: cargo feature `redis`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls() {
        assert!(is_tls_url("rediss://h/"));
        assert!(is_tls_url("REDISS://h/"));
        assert!(is_tls_url("valkeys://h/"));
        assert!(!is_tls_url("redis://h/"));
        assert!(!is_tls_url("unix:///r.sock"));
        assert!(!is_tls_url("rediss"));
    }

    #[cfg(feature = "redis")]
    #[test]
    fn descriptions_name_the_server_and_never_the_password() {
        for (url, described) in [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/0"),
            ("redis://h", "redis://h:6379/0"),
            ("redis://:pw@h:1/2", "redis://h:1/2"),
            ("redis://alice:s3cr3t@h:6390/0", "redis://alice@h:6390/0"),
            ("redis://alice:p%40ss%3Aw@h/", "redis://alice@h:6379/0"),
            (
                "rediss://u:pw@cache.example.com:6380",
                "rediss://u@cache.example.com:6380/0",
            ),
            ("rediss://h:1/#insecure", "rediss://h:1/0#insecure"),
            ("redis://[::1]:7000/3", "redis://[::1]:7000/3"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock (db 0)"),
            (
                "unix:///run/r.sock?db=4&pass=pw",
                "unix:///run/r.sock (db 4)",
            ),
            (
                "unix:///run/r.sock?user=alice&pass=pw",
                "unix:///run/r.sock (db 0, user alice)",
            ),
            ("redis://:pw@h:notaport/", "<an invalid URL>"),
            ("http://:pw@h/", "<an invalid URL>"),
            ("redis pw", "<an invalid URL>"),
        ] {
            assert_eq!(describe(url), described, "{url}");
            assert!(!describe(url).contains("pw") && !describe(url).contains("s3cr3t"));
        }
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn without_the_client_only_the_scheme_is_shown() {
        assert_eq!(
            describe("redis://u:pw@h/"),
            "redis://... (not built in: cargo feature `redis`)"
        );
        assert_eq!(
            describe("pw"),
            "?://... (not built in: cargo feature `redis`)"
        );
    }
}
