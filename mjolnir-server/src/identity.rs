//! Who a connection acts for.
//!
//! Decided in two steps: [`Identity::vouch`] looks at the WebSocket upgrade request (its TCP
//! peer and its headers), then [`Vouched::confirm`] looks at the hello's `user` claim. A
//! refusal waits for the hello, so the client gets a typed `unauthenticated` error and close
//! code 4001 rather than an HTTP status a browser's WebSocket cannot read.

use axum::http::{HeaderMap, HeaderName};
use ipnet::{IpNet, Ipv4Net};
use mjolnir_core::ErrorKind;
use mjolnir_core::protocol::ErrorReply;
use std::fmt;
use std::net::IpAddr;

/// How the server learns a connection's user. Chosen at start, the same for every
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Believe the `user` the client names in its hello. Only for `mjolnir dev`: anyone can
    /// claim to be anyone, which is what one developer trying several users wants.
    TrustClaim,
    /// Every connection is anonymous and the hello's claim is ignored: `mjolnir serve`
    /// when no proxy is named. A claim is no identity, and believing it would let anyone
    /// act as anyone; an app whose policies need a user refuses anonymous writes instead.
    Anonymous,
    /// A proxy in front of the server authenticates users and passes the name in the
    /// header `name` of the WebSocket upgrade (for example `X-Forwarded-User` from
    /// oauth2-proxy). The header is believed only when the request's TCP peer is one of
    /// `proxies`: anyone else who reaches the port could set it to any name. The hello's
    /// claim is ignored: the browser runtime claims the page's `?user=`, which only
    /// `mjolnir dev` believes, and a link that carries one must not change who a signed-in
    /// user is, nor lock them out.
    ProxyHeader {
        name: HeaderName,
        proxies: TrustedProxies,
    },
}

impl Identity {
    /// What the upgrade request from `peer` with `headers` establishes about its user.
    pub fn vouch(&self, peer: IpAddr, headers: &HeaderMap) -> Vouched {
        match self {
            Identity::TrustClaim => Vouched::Claim,
            Identity::Anonymous => Vouched::User(None),
            Identity::ProxyHeader { name, proxies } => {
                if !proxies.contains(peer) {
                    return Vouched::Refused(Refusal::UntrustedPeer(peer.to_canonical()));
                }
                match header_user(name, headers) {
                    Ok(user) => Vouched::User(Some(user)),
                    Err(refusal) => Vouched::Refused(refusal),
                }
            }
        }
    }

    /// Whether `peer` is a proxy this server trusts (and so its forwarding headers too).
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        match self {
            Identity::ProxyHeader { proxies, .. } => proxies.contains(peer),
            Identity::TrustClaim | Identity::Anonymous => false,
        }
    }
}

/// The one value of the header `name`. Two values are refused rather than one chosen: a
/// proxy that adds its header beside the client's, instead of replacing it, would let the
/// client choose which one counts.
fn header_user(name: &HeaderName, headers: &HeaderMap) -> Result<String, Refusal> {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(match headers.contains_key(name) {
            true => Refusal::DuplicateHeader(name.clone()),
            false => Refusal::MissingHeader(name.clone()),
        });
    };
    let bytes = value.as_bytes();
    if bytes.iter().all(|&b| b == b' ') {
        return Err(Refusal::EmptyHeader(name.clone()));
    }
    // Visible ASCII and inner spaces: what a user name needs, and nothing (control
    // characters, obs-text) that could be read two ways by the proxy, logs and policies.
    if !bytes.iter().all(|&b| b.is_ascii_graphic() || b == b' ') {
        return Err(Refusal::InvalidHeader(name.clone()));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// What the upgrade request established about its connection's user, before the hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vouched {
    /// Nothing: the hello's claim is the user ([`Identity::TrustClaim`]).
    Claim,
    /// The user is decided (`None`: anonymous); the hello's claim changes nothing.
    User(Option<String>),
    /// The connection may act for no one; the handshake is refused.
    Refused(Refusal),
}

impl Vouched {
    /// The confirmed user of a connection whose hello claims `claimed`.
    pub fn confirm(&self, claimed: Option<&str>) -> Result<Option<String>, ErrorReply> {
        match self {
            Vouched::Claim => Ok(claimed.map(str::to_owned)),
            Vouched::User(user) => {
                if claimed.is_some() && claimed != user.as_deref() {
                    tracing::debug!(?user, claimed, "ignoring the hello's user claim");
                }
                Ok(user.clone())
            }
            Vouched::Refused(refusal) => Err(ErrorReply::new(
                ErrorKind::Unauthenticated,
                refusal.to_string(),
            )),
        }
    }
}

/// Why an upgrade request may act for no one. Sent to the client in the `unauthenticated`
/// error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the connection does not come from the authenticating proxy ({0} is not a trusted proxy)"
    )]
    UntrustedPeer(IpAddr),
    #[error("no authenticated user: the upgrade request has no {0} header")]
    MissingHeader(HeaderName),
    #[error("the upgrade request has more than one {0} header")]
    DuplicateHeader(HeaderName),
    #[error("the {0} header is empty")]
    EmptyHeader(HeaderName),
    #[error("the {0} header holds characters other than visible ASCII and spaces")]
    InvalidHeader(HeaderName),
}

/// The addresses of the authenticating proxies: single addresses and networks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> TrustedProxies {
        TrustedProxies(nets.into_iter().map(canonical_net).collect())
    }

    /// Whether `peer` is one of the proxies. An IPv4 peer of a listener on an IPv6 address
    /// shows as `::ffff:a.b.c.d`; it is compared as the IPv4 address it is.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match net.prefix_len() == net.max_prefix_len() {
                true => write!(f, "{}", net.addr())?,
                false => write!(f, "{net}")?,
            }
        }
        Ok(())
    }
}

/// Parses a proxy's address (`10.0.0.5`, `::1`) or network (`10.1.0.0/16`, `fd00::/8`).
pub fn parse_proxy(s: &str) -> Result<IpNet, String> {
    match s.parse::<IpNet>() {
        Ok(net) => Ok(net.trunc()),
        Err(_) => s
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is neither an IP address nor a network like 10.1.0.0/16")),
    }
}

/// An IPv4-mapped network (`::ffff:10.0.0.0/104`) as the IPv4 network it is, so that it
/// matches canonical peers.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4.trunc());
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy_header(proxies: &[&str]) -> Identity {
        Identity::ProxyHeader {
            name: HeaderName::from_static("x-forwarded-user"),
            proxies: TrustedProxies::new(proxies.iter().map(|p| parse_proxy(p).unwrap())),
        }
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                "x-forwarded-user",
                axum::http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_header_identity_cannot_be_overridden_by_the_hello() {
        let id = proxy_header(&["10.0.0.5"]);
        let vouched = id.vouch(ip("10.0.0.5"), &headers(&[b"alice"]));
        assert_eq!(vouched, Vouched::User(Some("alice".into())));
        assert_eq!(vouched.confirm(None).unwrap(), Some("alice".into()));
        assert_eq!(
            vouched.confirm(Some("bob")).unwrap(),
            Some("alice".into()),
            "a ?user= claim changes nothing behind a proxy"
        );
        let missing = id.vouch(ip("10.0.0.5"), &headers(&[]));
        assert_eq!(
            missing.confirm(Some("bob")).unwrap_err().code,
            ErrorKind::Unauthenticated
        );
    }

    #[test]
    fn the_header_is_believed_only_from_a_trusted_proxy() {
        let id = proxy_header(&["10.0.0.5", "10.1.0.0/16", "fd00::/8"]);
        let alice = headers(&[b"alice"]);
        for trusted in ["10.0.0.5", "10.1.200.3", "::ffff:10.1.0.9", "fd12::1"] {
            assert_eq!(
                id.vouch(ip(trusted), &alice),
                Vouched::User(Some("alice".into())),
                "{trusted}"
            );
        }
        for untrusted in [
            "10.0.0.6",
            "10.2.0.1",
            "127.0.0.1",
            "::1",
            "::ffff:10.0.0.6",
        ] {
            let vouched = id.vouch(ip(untrusted), &alice);
            assert!(
                matches!(vouched, Vouched::Refused(Refusal::UntrustedPeer(_))),
                "{untrusted}: {vouched:?}"
            );
            assert_eq!(
                vouched.confirm(Some("alice")).unwrap_err().code,
                ErrorKind::Unauthenticated
            );
        }
    }

    #[test]
    fn an_ipv4_mapped_proxy_matches_its_ipv4_peer() {
        let id = proxy_header(&["::ffff:10.0.0.0/104"]);
        let alice = headers(&[b"alice"]);
        assert!(matches!(
            id.vouch(ip("10.0.0.9"), &alice),
            Vouched::User(Some(_))
        ));
        assert!(matches!(
            id.vouch(ip("::ffff:10.0.0.9"), &alice),
            Vouched::User(Some(_))
        ));
        assert!(matches!(
            id.vouch(ip("11.0.0.9"), &alice),
            Vouched::Refused(_)
        ));
    }

    #[test]
    fn empty_duplicated_and_odd_headers_are_refused() {
        let id = proxy_header(&["127.0.0.1"]);
        let vouch = |values: &[&[u8]]| id.vouch(ip("127.0.0.1"), &headers(values));
        let name = HeaderName::from_static("x-forwarded-user");
        assert_eq!(
            vouch(&[]),
            Vouched::Refused(Refusal::MissingHeader(name.clone()))
        );
        assert_eq!(
            vouch(&[b""]),
            Vouched::Refused(Refusal::EmptyHeader(name.clone()))
        );
        assert_eq!(
            vouch(&[b"eve", b"alice"]),
            Vouched::Refused(Refusal::DuplicateHeader(name.clone()))
        );
        assert_eq!(
            vouch(&[b"alice", b"alice"]),
            Vouched::Refused(Refusal::DuplicateHeader(name.clone()))
        );
        for odd in [&b"al\tice"[..], "älice".as_bytes(), b"\xff"] {
            assert_eq!(
                vouch(&[odd]),
                Vouched::Refused(Refusal::InvalidHeader(name.clone())),
                "{odd:?}"
            );
        }
        assert_eq!(
            vouch(&[b"Alice Smith <alice@example.com>"]),
            Vouched::User(Some("Alice Smith <alice@example.com>".into()))
        );
    }

    #[test]
    fn anonymous_ignores_header_and_claim_and_dev_believes_the_claim() {
        let alice = headers(&[b"alice"]);
        let anonymous = Identity::Anonymous.vouch(ip("127.0.0.1"), &alice);
        assert_eq!(anonymous.confirm(Some("bob")).unwrap(), None);
        let dev = Identity::TrustClaim.vouch(ip("127.0.0.1"), &alice);
        assert_eq!(dev.confirm(Some("bob")).unwrap(), Some("bob".into()));
        assert_eq!(dev.confirm(None).unwrap(), None);
    }

    #[test]
    fn proxies_parse_as_addresses_or_networks() {
        assert_eq!(parse_proxy("10.0.0.5").unwrap().to_string(), "10.0.0.5/32");
        assert_eq!(
            parse_proxy("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(parse_proxy("::1").unwrap().to_string(), "::1/128");
        assert!(parse_proxy("10.0.0.0/33").is_err());
        assert!(parse_proxy("proxy.example.com").is_err());
        let proxies =
            TrustedProxies::new(["10.0.0.5", "10.1.0.0/16"].map(|p| parse_proxy(p).unwrap()));
        assert_eq!(proxies.to_string(), "10.0.0.5, 10.1.0.0/16");
    }
}
