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
    /// The hello's claim is ignored: the browser runtime claims the page's `?user=`, which
    /// only `mjolnir dev` believes, and a link that carries one must not change who a
    /// signed-in user is, nor lock them out.
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
            Identity::Header(name) => match from_header {
                Some(h) => {
                    if claimed.is_some_and(|c| c != h) {
                        tracing::debug!(header = h, claimed, "ignoring the hello's user claim");
                    }
                    Ok(Some(h.to_owned()))
                }
                None => Err(ErrorReply::new(
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
            id.confirm(Some("alice"), Some("bob")).unwrap(),
            Some("alice".into()),
            "a ?user= claim changes nothing behind a proxy"
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
