//! The ids Lifeline hands out, each a type of its own so that a channel's
//! id can never be passed where a monitor's goes (as svix types its ids).
//!
//! Each is a string on the wire and in Redis (`#[serde(transparent)]`), so
//! the stored and published formats are those of plain strings; in code it
//! reads as a `&str` where one is asked for ([`Deref`]) and compares with
//! string literals.

use std::{borrow::Borrow, fmt, ops::Deref};

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id spelt `id`.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// Its spelling.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Its spelling, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl From<&String> for $name {
            fn from(id: &String) -> Self {
                Self(id.clone())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

id_type! {
    /// A monitor's id: 16 lower-case letters and digits, chosen at creation.
    MonitorId
}

id_type! {
    /// A channel's id.
    ChannelId
}

id_type! {
    /// An alert's id: `<monitor id>.<change number>` for a state change (so
    /// a retried write yields the same id), `test.<random>` for a test alert.
    AlertId
}

id_type! {
    /// One delivery of an alert to one channel: `msg_<alert id>_<channel id>`,
    /// the `webhook-id` a receiver deduplicates by.
    DeliveryId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_plain_string_on_the_wire() {
        let id = MonitorId::new("abc123");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""abc123""#);
        assert_eq!(
            serde_json::from_str::<MonitorId>(r#""abc123""#).unwrap(),
            id
        );
        assert_eq!(id, "abc123");
        assert_eq!(format!("{id} {id:?}"), r#"abc123 "abc123""#);
        let map: std::collections::HashMap<MonitorId, u8> = [(id.clone(), 1)].into();
        assert_eq!(map.get("abc123"), Some(&1));
    }
}
