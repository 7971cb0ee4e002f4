//! Identifiers: 20 lowercase hex characters (10 random bytes), as in the Go original.
//! Parsing is strict so that nothing else ever reaches a key or a queue name.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

pub const ID_LEN: usize = 20;

/// True if `s` is exactly 20 lowercase hex characters.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn random_id() -> String {
    let bytes: [u8; 10] = rand::random();
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
