//! What `make bench` measures that `make test` also holds to: the AWS lifecycle's
//! calls by operation (`lifecycle.rs`), asserted in `tests/lifecycle.rs` and printed
//! with its cost by the bench.

pub mod lifecycle;
