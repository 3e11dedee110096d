//! Who a connection acts for.

use mjolnir_core::ErrorKind;
use mjolnir_core::protocol::ErrorReply;

/// How the server learns a connection's user. Chosen at start, the same for every
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Believe the `user` the client names in its hello. Only for `mjolnir dev`: anyone can
    /// claim to be anyone.
    TrustClaim,
    /// A proxy in front of the server authenticates users and passes the name in this HTTP
    /// header of the WebSocket upgrade (for example `X-Forwarded-User` from oauth2-proxy).
    /// A hello that claims a different user is refused.
    Header(String),
}

impl Identity {
    /// The confirmed user of a connection, from what the upgrade request carried and what
    /// the hello claims.
    pub fn confirm(
        &self,
        from_header: Option<&str>,
        claimed: Option<&str>,
    ) -> Result<Option<String>, ErrorReply> {
        match self {
            Identity::TrustClaim => Ok(claimed.map(str::to_owned)),
            Identity::Header(name) => match (from_header, claimed) {
                (Some(h), Some(c)) if h != c => Err(ErrorReply::new(
                    ErrorKind::Unauthenticated,
                    format!(
                        "the hello claims user {c:?} but the connection is authenticated as {h:?}"
                    ),
                )),
                (Some(h), _) => Ok(Some(h.to_owned())),
                (None, _) => Err(ErrorReply::new(
                    ErrorKind::Unauthenticated,
                    format!("no authenticated user: the upgrade request has no {name} header"),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_identity_cannot_be_overridden_by_the_hello() {
        let id = Identity::Header("X-Forwarded-User".into());
        assert_eq!(
            id.confirm(Some("alice"), None).unwrap(),
            Some("alice".into())
        );
        assert_eq!(
            id.confirm(Some("alice"), Some("alice")).unwrap(),
            Some("alice".into())
        );
        assert_eq!(
            id.confirm(Some("alice"), Some("bob")).unwrap_err().code,
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            id.confirm(None, Some("bob")).unwrap_err().code,
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            Identity::TrustClaim.confirm(None, Some("bob")).unwrap(),
            Some("bob".into())
        );
    }
}
