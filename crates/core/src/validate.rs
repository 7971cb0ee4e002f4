//! Validation of everything a caller can send. Each function returns a clear
//! `Error::Invalid` instead of letting bad input reach a record or a queue name.

use crate::error::{Error, Result};
use crate::model::{MAX_DATASET_LEN, MAX_IDEMPOTENCY_KEY_LEN, MAX_OUTPUT_BYTES, MAX_REASON_BYTES, MAX_SIZE};

pub fn size(n: i64) -> Result<u32> {
    if (1..=MAX_SIZE as i64).contains(&n) {
        Ok(n as u32)
    } else {
        Err(Error::invalid("invalid_size", format!("size must be between 1 and {MAX_SIZE}, got {n}")))
    }
}

pub fn capacity(n: i64) -> Result<u32> {
    if (1..=MAX_SIZE as i64).contains(&n) {
        Ok(n as u32)
    } else {
        Err(Error::invalid("invalid_capacity", format!("capacity must be between 1 and {MAX_SIZE}, got {n}")))
    }
}

/// A dataset name: 1–256 printable ASCII characters, no whitespace. The Go client
/// sends `""` for "no dataset", so the caller maps empty to `None` before this.
pub fn dataset(s: &str) -> Result<String> {
    if s.is_empty() || s.len() > MAX_DATASET_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "invalid_dataset",
            format!("dataset must be 1 to {MAX_DATASET_LEN} printable ASCII characters without spaces, got {s:?}"),
        ));
    }
    Ok(s.to_owned())
}

/// `None` and `""` both mean "no dataset" (the Go client sends `""`).
pub fn optional_dataset(s: Option<&str>) -> Result<Option<String>> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => dataset(s).map(Some),
    }
}

pub fn idempotency_key(s: &str) -> Result<String> {
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "invalid_idempotency_key",
            format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"),
        ));
    }
    Ok(s.to_owned())
}

/// Keeps the last `max` bytes of `s` (the end of a log is the useful part), cut on a
/// character boundary.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

pub fn output(s: &str) -> String {
    tail(s, MAX_OUTPUT_BYTES)
}

pub fn reason(s: &str) -> String {
    tail(s, MAX_REASON_BYTES)
}

/// A deployment name becomes the prefix of every queue name: SQS allows 80 characters
/// of `[A-Za-z0-9_-]`, and the longest name is `{deployment}_{pool}_{worker}`. No `_`:
/// that is the separator (see `Settings::pool_queue`), which keeps IAM grants on
/// `{deployment}_*` from matching another deployment's queues.
pub fn deployment(s: &str) -> Result<String> {
    if s.is_empty() || s.len() > 30 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Error::invalid(
            "invalid_deployment",
            format!("deployment must be 1 to 30 characters of [A-Za-z0-9-], got {s:?}"),
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        assert!(size(0).is_err());
        assert!(size(-1).is_err());
        assert_eq!(size(1).unwrap(), 1);
        assert_eq!(size(MAX_SIZE as i64).unwrap(), MAX_SIZE);
        assert!(size(MAX_SIZE as i64 + 1).is_err());
        assert!(capacity(0).is_err());
    }

    #[test]
    fn datasets() {
        assert_eq!(optional_dataset(Some("")).unwrap(), None);
        assert_eq!(optional_dataset(None).unwrap(), None);
        assert_eq!(optional_dataset(Some("s3://bucket/d1")).unwrap().as_deref(), Some("s3://bucket/d1"));
        assert!(dataset("has space").is_err());
        assert!(dataset(&"x".repeat(MAX_DATASET_LEN + 1)).is_err());
        assert!(dataset("tab\t").is_err());
    }

    #[test]
    fn deployments() {
        assert!(deployment("lineup-prod-1").is_ok());
        assert!(deployment("lineup_prod").is_err(), "_ separates a deployment from the rest of a queue name");
        assert!(deployment("").is_err());
        assert!(deployment("a.b").is_err());
        assert!(deployment(&"a".repeat(31)).is_err());
    }

    proptest! {
        #[test]
        fn tail_is_bounded_suffix(s in "\\PC{0,300}", max in 0usize..200) {
            let t = tail(&s, max);
            prop_assert!(t.len() <= max || s.len() <= max);
            prop_assert!(s.ends_with(&t));
            prop_assert!(t.len() + 3 >= max.min(s.len()));
        }
    }
}
