//! API tokens as the state store keeps them: minted here, stored by their
//! SHA-256 (see [`super::StateStore::add_token`]), compared in constant time.
//! The control plane mints owner-scoped tokens and the admin API checks
//! presented ones, both through this module.

use rand::Rng;

/// A new random token: 32 bytes, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// The SHA-256 of a token, hex: how owner-scoped tokens are stored.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Compares tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
