//! Every environment variable the functions read: which handler reads it and which a
//! deployment must set. `infra/template.yaml` is checked against this table both ways
//! (crates/lambda/tests/template_env.rs: nothing required is missing, nothing set is
//! unread), and the table against the settings structs (the unit test below), so the
//! three cannot drift apart. At start a function warns about `LINEUP_*` variables it
//! does not read: a typo in a deployment should not pass in silence.

use crate::Role;

/// One variable.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    /// The handlers that read it (empty: only `lineup dev` does).
    pub read_by: &'static [Role],
    /// The handlers that cannot run correctly in a deployment without it.
    pub required_by: &'static [Role],
}

const ALL: &[Role] = &[Role::Schedule, Role::Release, Role::Gateway];
const NONE: &[Role] = &[];
const GATEWAY: &[Role] = &[Role::Gateway];
const SCHEDULE: &[Role] = &[Role::Schedule];

const fn var(name: &'static str, read_by: &'static [Role], required_by: &'static [Role]) -> Var {
    Var { name, read_by, required_by }
}

pub const VARS: &[Var] = &[
    // Names the tables (unless LINEUP_TABLE_PREFIX) and every queue: the default,
    // `lineup`, would silently point a function at another deployment's resources.
    var("LINEUP_DEPLOYMENT", ALL, ALL),
    var("LINEUP_TABLE_PREFIX", ALL, NONE),
    // TTLs and retries: every handler writes records that carry them.
    var("LINEUP_POOL_TTL", ALL, NONE),
    var("LINEUP_WORKER_TTL", ALL, NONE),
    var("LINEUP_REPLICA_TTL", ALL, NONE),
    var("LINEUP_ALLOC_TTL", ALL, NONE),
    var("LINEUP_MAX_RETRY", ALL, NONE),
    // Finished evals' purge_at: whichever handler finishes one writes it.
    var("LINEUP_HISTORY_RETENTION", ALL, NONE),
    // A new pool's index shards: the gateway creates pools.
    var("LINEUP_INDEX_SHARDS", GATEWAY, NONE),
    var("LINEUP_BLOCKED_BACKOFF_MAX", SCHEDULE, NONE),
    // `lineup dev`'s releaser loop; on AWS the EventBridge rule sets the pace.
    var("LINEUP_RELEASE_INTERVAL", NONE, NONE),
    // A deployment authenticates with the hash; the plaintext is for `lineup dev` and
    // for trying a function by hand.
    var("LINEUP_ADMIN_TOKEN_SHA256", GATEWAY, GATEWAY),
    var("LINEUP_ADMIN_TOKEN", GATEWAY, NONE),
    var("LINEUP_SCHEDULE_MARGIN", SCHEDULE, NONE),
    var("LINEUP_SCHEDULE_WAIT", SCHEDULE, NONE),
    var("LINEUP_SCHEDULE_MAX", SCHEDULE, NONE),
    var("LINEUP_SCHEDULE_LOOPS", SCHEDULE, NONE),
    var("LINEUP_LOG", ALL, NONE),
    // Where the functions' figures go (the template's alarms read them there).
    var("LINEUP_METRICS_NAMESPACE", ALL, NONE),
    // `lineup dev`'s /metrics scrape token; the functions serve no /metrics.
    var("LINEUP_METRICS_TOKEN", NONE, NONE),
    // Read by lambda_http; set at start when absent (see `ignore_stage_in_path`).
    var("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", GATEWAY, NONE),
];

pub fn find(name: &str) -> Option<&'static Var> {
    VARS.iter().find(|v| v.name == name)
}

/// Of `names`, the `LINEUP_*` ones (and the ones of the table) that `role` does not read.
pub fn unread<'a>(role: Role, names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|n| match find(n) {
            Some(v) => !v.read_by.contains(&role),
            None => n.starts_with("LINEUP_"),
        })
        .collect()
}

/// The variables `role` needs that `names` lacks.
pub fn missing<'a>(role: Role, names: impl IntoIterator<Item = &'a str> + Clone) -> Vec<&'static str> {
    VARS.iter()
        .filter(|v| v.required_by.contains(&role) && !names.clone().into_iter().any(|n| n == v.name))
        .map(|v| v.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_aux::serde_introspection::serde_introspect;

    /// Every field of the structs the functions read with envy is in the table, and
    /// every `LINEUP_*` name in the table is a field (or read directly: LINEUP_LOG).
    #[test]
    fn the_table_matches_the_settings_structs() {
        let fields: Vec<String> = serde_introspect::<lineup_core::Settings>()
            .iter()
            .chain(serde_introspect::<crate::FunctionSettings>())
            .map(|f| format!("LINEUP_{}", f.to_uppercase()))
            .collect();
        for f in &fields {
            assert!(find(f).is_some(), "{f} is read but not in env::VARS");
        }
        for v in VARS.iter().filter(|v| v.name.starts_with("LINEUP_") && v.name != "LINEUP_LOG") {
            assert!(fields.iter().any(|f| f == v.name), "{} is in env::VARS but no settings field reads it", v.name);
        }
        for v in VARS {
            for r in v.required_by {
                assert!(v.read_by.contains(r), "{} is required by {r:?} but not read by it", v.name);
            }
        }
    }

    #[test]
    fn unread_and_missing() {
        let set = ["LINEUP_DEPLOYMENT", "LINEUP_SCHEDULE_WAIT", "LINEUP_TYPO", "PATH"];
        assert_eq!(unread(Role::Gateway, set), vec!["LINEUP_SCHEDULE_WAIT", "LINEUP_TYPO"]);
        assert_eq!(unread(Role::Schedule, set), vec!["LINEUP_TYPO"]);
        assert_eq!(missing(Role::Gateway, set), vec!["LINEUP_ADMIN_TOKEN_SHA256"]);
        assert!(missing(Role::Release, set).is_empty());
    }
}
