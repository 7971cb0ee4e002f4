//! Identifiers: 20 lowercase hex characters (10 bytes), the Go original's format.
//! Parsing is strict so that nothing else ever reaches a key or a queue name.
//!
//! Unlike the original's 10 random bytes, a new id starts with the time: 5 bytes of
//! milliseconds since 2024 (wraps in 2058), then 2 bytes chosen at random once per
//! process, then a 3-byte per-process counter that starts at random. So ids sort by
//! creation, and a store's B-trees take new records at their right edge: a backlog of
//! a million evals costs a few hot pages per commit, not a random page per insert
//! (measured in `make bench`: drain and submit rates, and the backlog rate staying
//! flat). Within a process ids never repeat (the counter would have to wrap within a
//! millisecond); two processes collide only with the same millisecond, process bytes
//! and counter value. Ids are names, not secrets: tokens carry their own random secret.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

pub const ID_LEN: usize = 20;

/// Which of `n` buckets `s` falls in: FNV-1a of its bytes, mod `n` (`n` = 0 is taken
/// as 1). Stable across processes and releases (it places records and pools, so it
/// must never change); ids start with their creation time, so a prefix would not spread.
pub fn bucket(s: &str, n: u32) -> u32 {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (h % u64::from(n.max(1))) as u32
}

/// True if `s` is exactly 20 lowercase hex characters.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Milliseconds from the Unix epoch to 2024-01-01T00:00:00Z.
const ID_EPOCH_MS: u64 = 1_704_067_200_000;

fn random_id() -> String {
    block_id(1)
}

/// The first of `n` ids that follow one another (`EvalId::nth`): the counter moves on
/// by `n` at once, so no id this process makes later repeats one of them.
fn block_id(n: u32) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static PROCESS: OnceLock<[u8; 2]> = OnceLock::new();
    static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
    let process = PROCESS.get_or_init(rand::random);
    let count = COUNTER.get_or_init(|| AtomicU32::new(rand::random())).fetch_add(n.max(1), Ordering::Relaxed);
    // A clock before 2024 (or before 1970) still gives valid, if unordered, ids.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as u64).wrapping_sub(ID_EPOCH_MS))
        .unwrap_or(0);
    let mut bytes = [0u8; 10];
    bytes[..5].copy_from_slice(&ms.to_be_bytes()[3..]);
    bytes[5..7].copy_from_slice(process);
    bytes[7..].copy_from_slice(&count.to_be_bytes()[1..]);
    hex::encode(bytes)
}

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn generate() -> Self {
                Self(random_id())
            }

            pub fn parse(s: &str) -> Result<Self, Error> {
                if is_valid_id(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(Error::invalid(
                        "invalid_id",
                        format!(concat!("invalid ", $what, " id {:?}: expected 20 lowercase hex characters"), s),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
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
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Self::parse(s)
            }
        }
    };
}

id_type!(PoolId, "pool");
id_type!(WorkerId, "worker");
id_type!(EvalId, "eval");
id_type!(AllocId, "alloc");
id_type!(PipelineId, "pipeline");

impl EvalId {
    /// The first id of a block of `n` (at most 2^24) reserved at once: a pipeline's
    /// evals, known before they are created, so creating one twice is a no-op.
    pub fn block(n: u32) -> EvalId {
        EvalId(block_id(n))
    }

    /// The `k`-th id of the block this one starts: the low five bytes (process and
    /// counter) plus `k`, the time bytes kept.
    pub fn nth(&self, k: u32) -> EvalId {
        let bytes = hex::decode(&self.0).unwrap_or_default();
        let mut low = [0u8; 8];
        low[3..].copy_from_slice(bytes.get(5..10).unwrap_or(&[0; 5]));
        let low = (u64::from_be_bytes(low) + u64::from(k)) & 0xff_ffff_ffff;
        EvalId(format!("{}{}", &self.0[..10], &hex::encode(low.to_be_bytes())[6..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_ids_parse() {
        for _ in 0..100 {
            let id = PoolId::generate();
            assert_eq!(id.as_str().len(), ID_LEN);
            assert_eq!(PoolId::parse(id.as_str()).unwrap(), id);
        }
    }

    #[test]
    fn generated_ids_are_unique_and_sort_by_time() {
        let ids: std::collections::HashSet<String> =
            (0..100_000).map(|_| EvalId::generate().as_str().to_owned()).collect();
        assert_eq!(ids.len(), 100_000, "no repeats within a process");
        let early = EvalId::generate();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let late = EvalId::generate();
        assert!(early < late, "{early:?} should sort before {late:?}");
        assert_eq!(early.as_str()[10..14], late.as_str()[10..14], "same process bytes");
    }

    #[test]
    fn a_block_of_ids_is_reserved_and_derived() {
        let base = EvalId::block(1_000);
        let ids: std::collections::HashSet<EvalId> = (0..1_000).map(|k| base.nth(k)).collect();
        assert_eq!(ids.len(), 1_000);
        assert_eq!(base.nth(0), base);
        assert!(ids.iter().all(|id| EvalId::parse(id.as_str()).is_ok() && id.as_str()[..10] == base.as_str()[..10]));
        // Nothing generated afterwards falls inside the block.
        let after: Vec<EvalId> = (0..10_000).map(|_| EvalId::generate()).collect();
        assert!(after.iter().all(|id| !ids.contains(id)));
        // The counter's carry goes into the process bytes, never the time.
        let edge = EvalId::parse("0000000001aaaaffffff").unwrap();
        assert_eq!(edge.nth(1).as_str(), "0000000001aaab000000");
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "abc",
            "0123456789ABCDEF0123",
            "0123456789abcdef012",
            "0123456789abcdef01234",
            "../../etc/passwd00000",
            "0123456789abcdef012g",
            "0123456789abcdef01-3",
        ] {
            assert!(PoolId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn parse_accepts_only_lower_hex_of_len_20(s in ".{0,24}") {
            let ok = s.len() == 20 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
            prop_assert_eq!(EvalId::parse(&s).is_ok(), ok);
        }
    }
}
