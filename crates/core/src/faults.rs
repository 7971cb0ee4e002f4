//! Named fault points at each step of an eval's journey, from the `fail` crate. They
//! are compiled into every build (a registry lookup when reached; nothing is armed in
//! production: only `fail::cfg`, which tests call, arms one), so the code the crash
//! tests run is the code that is deployed. Armed with `return`, a point fails the step
//! there as a crash would leave it (what was written stays written, nothing after it
//! happens); armed with `panic`, the task running it dies there.
//! `crates/conformance` (`service_crash_at_every_step`) arms each in turn, on both
//! backends.

/// Every point, in the order of the journey.
pub const POINTS: &[&str] = &[
    "submit.after_send",
    "place.after_claim",
    "deliver.after_send",
    "poll.after_receive",
    "finish.after_send",
    "finish.after_complete_first",
    "finish.after_release",
    "release.before_expire",
    "disband.after_mark",
];

/// The error an armed point returns.
pub fn injected(point: &str) -> crate::Error {
    crate::Error::Backend(format!("injected fault at {point}"))
}

/// `fault!("name")`: returns `Err(injected("name"))` from the enclosing function when
/// the point is armed with `return`.
#[macro_export]
macro_rules! fault {
    ($name:literal) => {
        fail::fail_point!($name, |_| Err($crate::faults::injected($name)))
    };
}
