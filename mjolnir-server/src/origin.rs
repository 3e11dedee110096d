//! Which pages may open a WebSocket to this server.
//!
//! A browser lets a page of any site open a WebSocket to any server, and sends the
//! server's cookies (or HTTP credentials) along: behind an authenticating proxy, a page on
//! another site would act as whoever is signed in (cross-site WebSocket hijacking). But a
//! browser also says which page asks, in the `Origin` header, and no page can change it.
//! So an upgrade whose `Origin` is not allowed is refused with 403 before upgrading.
//!
//! An upgrade without `Origin` is accepted: it comes from a native client (mjolnir-client,
//! the benchmark), which needs no page's leave, since it holds no browser user's
//! credentials. This check protects browser users; it authenticates no one.

use axum::http::uri::Authority;
use axum::http::{HeaderMap, Uri, header};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The origins whose pages may open a WebSocket. Chosen at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `mjolnir serve` without `--allowed-origin`: the origin of the host the request was
    /// sent to (its `Host` header, or a trusted proxy's `X-Forwarded-Host`), which is where
    /// the app's pages come from when the server serves them itself.
    SameHost,
    /// `mjolnir serve --allowed-origin …`: exactly these.
    Listed(Vec<Origin>),
    /// `mjolnir dev`: pages from this machine (`localhost`, 127.0.0.0/8, `[::1]`, any port
    /// and scheme), and these. Not the host the request was sent to: a dev server may
    /// listen on every address, and one developer's machine is not a site to be visited.
    Loopback(Vec<Origin>),
}

impl AllowedOrigins {
    /// What `mjolnir serve` allows: `listed`, or if none, the same host.
    pub fn serve(listed: Vec<Origin>) -> AllowedOrigins {
        match listed.is_empty() {
            true => AllowedOrigins::SameHost,
            false => AllowedOrigins::Listed(listed),
        }
    }

    /// Whether the upgrade request with `headers` and `uri` may open a WebSocket.
    /// `from_trusted_proxy`: the request comes from a proxy whose `X-Forwarded-Host` names
    /// the host the browser asked for.
    pub fn check(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        from_trusted_proxy: bool,
    ) -> Result<(), Refusal> {
        let Some(origin) = single(headers, header::ORIGIN.as_str())? else {
            return Ok(());
        };
        let origin = match origin.parse::<Origin>() {
            Ok(origin) => origin,
            Err(_) if origin == "null" => return Err(Refusal::Opaque),
            Err(_) => return Err(Refusal::Malformed(origin.to_owned())),
        };
        match self {
            AllowedOrigins::Listed(listed) if listed.contains(&origin) => Ok(()),
            AllowedOrigins::Listed(_) => Err(Refusal::NotListed(origin)),
            AllowedOrigins::Loopback(listed)
                if origin.is_loopback() || listed.contains(&origin) =>
            {
                Ok(())
            }
            AllowedOrigins::Loopback(_) => Err(Refusal::NotLoopback(origin)),
            AllowedOrigins::SameHost => {
                let forwarded = match from_trusted_proxy {
                    true => single(headers, "x-forwarded-host")?,
                    false => None,
                };
                let host = match forwarded {
                    Some(host) => Some(host),
                    None => single(headers, header::HOST.as_str())?,
                };
                let host = host
                    .or_else(|| uri.authority().map(Authority::as_str))
                    .ok_or_else(|| Refusal::NoHost(origin.clone()))?;
                match origin.is_at(host) {
                    true => Ok(()),
                    false => Err(Refusal::NotSameHost {
                        origin,
                        host: host.to_owned(),
                    }),
                }
            }
        }
    }
}

/// The one value of the header `name`, if any. Two are refused: which one counts would
/// be a guess, and a comma-separated list (a proxy chain's `X-Forwarded-Host`) too.
fn single<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, Refusal> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(value), None) => match value.to_str() {
            Ok(value) if !value.contains(',') => Ok(Some(value)),
            _ => Err(Refusal::Ambiguous(name)),
        },
        (Some(_), Some(_)) => Err(Refusal::Ambiguous(name)),
    }
}

/// Why an upgrade is refused: the plain-text body of the 403.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the {0} header is repeated, a list, or not text")]
    Ambiguous(&'static str),
    #[error(
        "the page's origin is opaque (\"null\": a sandboxed frame, a local file or a \
         redirect), and such pages are not allowed"
    )]
    Opaque,
    #[error("the origin {0:?} is not scheme://host[:port] with http or https")]
    Malformed(String),
    #[error("pages of {0} are not allowed (see --allowed-origin)")]
    NotListed(Origin),
    #[error(
        "pages of {origin} are not allowed: it is not the origin of this server ({host}); \
         name other origins with --allowed-origin"
    )]
    NotSameHost { origin: Origin, host: String },
    #[error("pages of {0} are not allowed: the request names no host to compare it with")]
    NoHost(Origin),
    #[error(
        "pages of {0} are not allowed: `mjolnir dev` accepts pages from localhost, \
         127.0.0.0/8 and [::1]; name others with --allowed-origin"
    )]
    NotLoopback(Origin),
}

/// A web origin, `scheme://host:port`, as browsers send it in `Origin` and as
/// `--allowed-origin` names it. The host is in lower case (IPv6 in brackets) and the port
/// is explicit, so equal origins compare equal however they were written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    scheme: Scheme,
    host: String,
    port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Not an origin Mjölnir can allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an origin like https://app.example.com or http://localhost:8080")]
pub struct BadOrigin(String);

impl FromStr for Origin {
    type Err = BadOrigin;

    /// `http://` or `https://`, then a host and an optional port; nothing else (no path,
    /// no user). One trailing slash is forgiven, for `--allowed-origin` copied from an
    /// address bar; browsers never send one.
    fn from_str(s: &str) -> Result<Origin, BadOrigin> {
        let bad = || BadOrigin(s.to_owned());
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad());
        }
        let authority = rest.parse::<Authority>().map_err(|_| bad())?;
        Ok(Origin {
            scheme,
            host: authority.host().to_ascii_lowercase(),
            port: port(&authority, scheme).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}", self.host)?;
        if self.port != self.scheme.default_port() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl Origin {
    /// `localhost`, 127.0.0.0/8 or `[::1]`.
    fn is_loopback(&self) -> bool {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }

    /// Whether this is the origin of a page served from `host` (a `Host` header: a host
    /// and an optional port). A `Host` without a port means the default port of the
    /// origin's scheme: the server cannot tell which scheme the browser used (a proxy may
    /// have ended TLS), so the scheme is not compared.
    fn is_at(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<Authority>() else {
            return false;
        };
        authority.host().eq_ignore_ascii_case(&self.host)
            && port(&authority, self.scheme) == Some(self.port)
    }
}

/// The port of `authority` (a host and an optional port, no user), or the default port of
/// `scheme` if it names none; `None` if it names one that is no port (`:99999`, `:`),
/// which must not pass for the default. (`Authority::port` is `None` for both.)
fn port(authority: &Authority, scheme: Scheme) -> Option<u16> {
    match authority.as_str().strip_prefix(authority.host())? {
        "" => Some(scheme.default_port()),
        rest => rest.strip_prefix(':')?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    fn origins(list: &[&str]) -> Vec<Origin> {
        list.iter().map(|o| o.parse().unwrap()).collect()
    }

    fn check(allowed: &AllowedOrigins, pairs: &[(&'static str, &str)]) -> Result<(), Refusal> {
        allowed.check(&request(pairs), &Uri::from_static("/ws"), false)
    }

    #[test]
    fn origins_parse_and_compare_however_written() {
        let a: Origin = "HTTPS://App.Example.com".parse().unwrap();
        assert_eq!(a, "https://app.example.com:443/".parse().unwrap());
        assert_eq!(a.to_string(), "https://app.example.com");
        assert_ne!(a, "http://app.example.com".parse().unwrap());
        assert_ne!(a, "https://app.example.com:8443".parse().unwrap());
        let v6: Origin = "http://[::1]:8080".parse().unwrap();
        assert_eq!(v6.to_string(), "http://[::1]:8080");
        assert!(v6.is_loopback());
        for bad in [
            "null",
            "app.example.com",
            "ftp://app.example.com",
            "https://",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://app.example.com?x",
            "https://app.example.com:99999",
            "https://app.example.com:",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn without_an_origin_a_native_client_is_accepted() {
        for allowed in [
            AllowedOrigins::SameHost,
            AllowedOrigins::Listed(origins(&["https://app.example.com"])),
            AllowedOrigins::Loopback(vec![]),
        ] {
            assert_eq!(check(&allowed, &[("host", "10.0.0.1:8080")]), Ok(()));
        }
    }

    #[test]
    fn by_default_serve_allows_the_origin_of_its_host_only() {
        let same = AllowedOrigins::serve(vec![]);
        let ok = |origin: &str, host: &str| check(&same, &[("origin", origin), ("host", host)]);
        assert_eq!(ok("https://app.example.com", "app.example.com"), Ok(()));
        assert_eq!(ok("https://app.example.com", "APP.example.com:443"), Ok(()));
        assert_eq!(ok("http://app.example.com", "app.example.com"), Ok(()));
        assert_eq!(ok("http://127.0.0.1:8080", "127.0.0.1:8080"), Ok(()));
        assert_eq!(ok("http://[::1]:8080", "[::1]:8080"), Ok(()));
        for (origin, host) in [
            ("https://evil.example", "app.example.com"),
            ("https://app.example.com.evil.example", "app.example.com"),
            ("http://127.0.0.1:9999", "127.0.0.1:8080"),
            ("http://app.example.com:8080", "app.example.com"),
            ("https://app.example.com", "app.example.com:8443"),
            ("https://app.example.com", "app.example.com:65979"),
        ] {
            assert!(
                matches!(ok(origin, host), Err(Refusal::NotSameHost { .. })),
                "{origin} at {host}"
            );
        }
        assert_eq!(ok("null", "app.example.com"), Err(Refusal::Opaque));
        assert!(matches!(
            ok("file://", "app.example.com"),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            check(&same, &[("origin", "https://app.example.com")]),
            Err(Refusal::NoHost(_))
        ));
        assert_eq!(
            check(
                &same,
                &[
                    ("origin", "https://evil.example"),
                    ("origin", "https://app.example.com"),
                    ("host", "app.example.com"),
                ]
            ),
            Err(Refusal::Ambiguous("origin"))
        );
    }

    #[test]
    fn a_trusted_proxys_forwarded_host_stands_for_the_host() {
        let same = AllowedOrigins::SameHost;
        let headers = request(&[
            ("origin", "https://app.example.com"),
            ("host", "10.0.0.7:8080"),
            ("x-forwarded-host", "app.example.com"),
        ]);
        let uri = Uri::from_static("/ws");
        assert_eq!(same.check(&headers, &uri, true), Ok(()));
        assert!(
            same.check(&headers, &uri, false).is_err(),
            "anyone else's X-Forwarded-Host is ignored"
        );
        let chain = request(&[
            ("origin", "https://app.example.com"),
            ("x-forwarded-host", "app.example.com, evil.example"),
        ]);
        assert_eq!(
            same.check(&chain, &uri, true),
            Err(Refusal::Ambiguous("x-forwarded-host"))
        );
    }

    #[test]
    fn listed_origins_replace_the_same_host() {
        let listed = AllowedOrigins::serve(origins(&["https://app.example.com"]));
        let host = ("host", "app.example.com");
        assert_eq!(
            check(&listed, &[("origin", "https://app.example.com"), host]),
            Ok(())
        );
        assert!(matches!(
            check(&listed, &[("origin", "http://app.example.com"), host]),
            Err(Refusal::NotListed(_))
        ));
        assert!(matches!(
            check(&listed, &[("origin", "https://evil.example"), host]),
            Err(Refusal::NotListed(_))
        ));
    }

    #[test]
    fn dev_allows_loopback_pages_and_the_listed_ones() {
        let dev = AllowedOrigins::Loopback(origins(&["http://192.168.1.5:8080"]));
        for origin in [
            "http://localhost:8080",
            "https://localhost",
            "http://127.0.0.1:41234",
            "http://127.1.2.3",
            "http://[::1]:3000",
            "http://192.168.1.5:8080",
        ] {
            assert_eq!(check(&dev, &[("origin", origin)]), Ok(()), "{origin}");
        }
        for origin in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://192.168.1.5:8081",
            "http://10.0.0.1:8080",
        ] {
            assert!(
                matches!(
                    check(&dev, &[("origin", origin)]),
                    Err(Refusal::NotLoopback(_))
                ),
                "{origin}"
            );
        }
        assert_eq!(check(&dev, &[("origin", "null")]), Err(Refusal::Opaque));
    }
}
