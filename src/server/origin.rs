//! Requests a browser can be made to send without its user meaning to: the
//! checks that keep another web site from using `serve` through a visitor's
//! browser.
//!
//! - **Cross-site writes.** A `POST`, `PUT`, `PATCH` or `DELETE` whose `Origin` is not
//!   this server's own (or is `null`), or whose `Sec-Fetch-Site` says `cross-site` or
//!   `same-site`, is refused. Programs (curl, SDKs, other servers) send neither header
//!   and are not affected; the session cookie is `SameSite=Strict` as well.
//! - **DNS rebinding.** Without `PM_API_TOKEN`, the server trusts whoever reaches
//!   loopback, so a request must also *name* a loopback host (`localhost`,
//!   `127.0.0.1`, `[::1]`, any port): a page of `evil.example` whose name was pointed
//!   at 127.0.0.1 sends `Host: evil.example` and is refused.
//!
//! `/webhooks/incoming` is exempt: senders are servers, and every request needs a
//! valid signature.

use crate::server::error::ApiError;
use axum::http::{HeaderMap, Method, StatusCode, header};

/// Whether `host` (a `Host` header: name or address, with an optional port) is loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses what a browser could be tricked into sending (see the module docs).
pub fn check(token_set: bool, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !token_set && !host.is_empty() && !loopback_host(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "without PM_API_TOKEN the server answers requests for loopback names only \
             (localhost, 127.0.0.1, [::1]); set PM_API_TOKEN to reach it by another name",
        ));
    }
    let writes = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if !writes {
        return Ok(());
    }
    let cross_fetch = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site" || v == "same-site");
    let foreign_origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            authority.is_none_or(|a| !a.eq_ignore_ascii_case(host))
        });
    if cross_fetch || foreign_origin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "a change requested by another site's page is refused; use this server's own page or the API from a program",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap_or_else(|_| unreachable!()));
        }
        h
    }

    #[test]
    fn loopback_names_are_loopback_and_others_are_not() {
        for h in [
            "localhost",
            "localhost:8787",
            "LOCALHOST.",
            "app.localhost:1",
            "127.0.0.1:8787",
            "127.9.9.9",
            "[::1]:8787",
        ] {
            assert!(loopback_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:8787",
            "localhost.evil.example",
            "10.0.0.1:8787",
            "[::2]:1",
            "0.0.0.0",
        ] {
            assert!(!loopback_host(h), "{h}");
        }
    }

    #[test]
    fn another_sites_writes_are_refused_and_reads_and_programs_pass() {
        let own = [("host", "127.0.0.1:8787")];
        assert!(check(false, &Method::POST, &headers(&own)).is_ok());
        assert!(
            check(
                false,
                &Method::POST,
                &headers(&[
                    ("host", "127.0.0.1:8787"),
                    ("origin", "http://127.0.0.1:8787")
                ])
            )
            .is_ok()
        );
        for origin in ["http://evil.example", "null", "http://127.0.0.1:9999"] {
            let h = headers(&[("host", "127.0.0.1:8787"), ("origin", origin)]);
            assert!(check(true, &Method::POST, &h).is_err(), "{origin}");
            assert!(check(true, &Method::GET, &h).is_ok(), "{origin}: a read");
        }
        let h = headers(&[("host", "127.0.0.1:8787"), ("sec-fetch-site", "cross-site")]);
        assert!(check(true, &Method::DELETE, &h).is_err());
        let rebound = headers(&[("host", "evil.example:8787")]);
        assert!(check(false, &Method::GET, &rebound).is_err());
        assert!(
            check(true, &Method::GET, &rebound).is_ok(),
            "with a token, any name"
        );
    }
}
