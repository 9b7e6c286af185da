//! Push tokens and ids. A token is 32 random alphanumeric characters
//! (~190 bits); only its SHA-256 is stored, and only its first characters
//! are ever shown or logged (invariant 8).

use rand::{RngExt, distr::Alphanumeric};
use sha2::{Digest, Sha256};

/// Length of a push token.
pub const TOKEN_LEN: usize = 32;

fn random_alnum(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A new push token.
pub fn generate() -> String {
    random_alnum(TOKEN_LEN)
}

/// A new id for a monitor or channel: 16 lowercase letters and digits.
pub fn new_id() -> String {
    random_alnum(16).to_ascii_lowercase()
}

/// SHA-256 of a token, hex: the form in which tokens are stored.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The part of a token that may be shown or logged.
pub fn hint(token: &str) -> String {
    let head: String = token.chars().take(4).collect();
    format!("{head}…")
}

/// Whether `s` has the shape of a token (cheap check before any lookup).
pub fn plausible(s: &str) -> bool {
    (8..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = generate();
        assert_eq!(a.len(), TOKEN_LEN);
        assert_ne!(a, generate());
        assert!(plausible(&a));
        assert_eq!(hash(&a).len(), 64);
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(!hint(&a).contains(&a[4..]));
    }
}
