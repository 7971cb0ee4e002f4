//! Tokens. The admin token may do anything; a worker token (returned once, at
//! registration) may only act for its own worker and that worker's allocs. Only
//! SHA-256 hashes are stored, and hashes are compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::id::{PoolId, WorkerId};

/// Who a request acts as, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Worker { pool: PoolId, worker: WorkerId },
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn hash_matches(token: &str, stored_hash: &str) -> bool {
    let computed = hash(token);
    computed.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// 32 random bytes, hex.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// A worker token names its worker so the check is one lookup:
/// `w.{pool}.{worker}.{secret}`. Only the whole token's hash is stored.
pub fn new_worker_token(pool: &PoolId, worker: &WorkerId) -> String {
    format!("w.{pool}.{worker}.{}", random_secret())
}

/// The pool and worker a worker token claims to be; the caller checks the hash.
pub fn parse_worker_token(token: &str) -> Option<(PoolId, WorkerId)> {
    let mut parts = token.split('.');
    let (Some("w"), Some(pool), Some(worker), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if secret.len() != 64 {
        return None;
    }
    Some((PoolId::parse(pool).ok()?, WorkerId::parse(worker).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_tokens_round_trip() {
        let (p, w) = (PoolId::generate(), WorkerId::generate());
        let t = new_worker_token(&p, &w);
        assert_eq!(parse_worker_token(&t), Some((p, w)));
        assert!(hash_matches(&t, &hash(&t)));
        assert!(!hash_matches(&t, &hash("other")));
        assert_eq!(parse_worker_token("w.x.y.z"), None);
        assert_eq!(parse_worker_token(&format!("{t}.extra")), None);
    }
}
