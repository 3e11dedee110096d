//! Commit versions.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The commit version at which a key was last written.
///
/// Versions are assigned by the server from one database sequence, so they grow with commit
/// order for any two commits that touch a common key. [`Version::ABSENT`] (zero) is the version
/// of a key that has never been written: reading a missing row records it, so two
/// transactions that both insert the same key conflict.
///
/// On the wire a version is a decimal string, never a JSON number: JavaScript numbers lose
/// precision above 2^53 and a long-lived database will get there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(type = "string"))]
pub struct Version(pub u64);

impl Version {
    /// The version of a key that was never written.
    pub const ABSENT: Version = Version(0);

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse::<u64>().map(Version).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid version {}: expected a decimal string",
                crate::key::quoted(&text)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_travel_as_strings_beyond_2_pow_53() {
        let v = Version(u64::MAX);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, "\"18446744073709551615\"");
        assert_eq!(serde_json::from_str::<Version>(&json).unwrap(), v);
    }

    #[test]
    fn a_json_number_is_not_a_version() {
        assert!(serde_json::from_str::<Version>("7").is_err());
        assert!(serde_json::from_str::<Version>("\"-1\"").is_err());
    }
}
