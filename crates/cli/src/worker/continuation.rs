//! A job that finishes for now and continues later (prorch's `on_continue`): it writes
//! `{"after": seconds, "state": any}` to `$LINEUP_CONTINUE_FILE` and exits with
//! `EXIT_CONTINUE` (75, EX_TEMPFAIL). The agent completes its alloc with
//! `continue_after` and `state`; the eval runs again after the delay, its next job
//! getting the state as `$LINEUP_STATE`.

use std::path::{Path, PathBuf};

use lineup_core::model::{MAX_CONTINUE_AFTER_S, MAX_STATE_BYTES};
use serde::Deserialize;
use serde_json::Value;

pub const EXIT_CONTINUE: i32 = 75;
const FILE: &str = "lineup-continue.json";

/// Where the job writes its request (in its own private directory).
pub fn file(workdir: &Path) -> PathBuf {
    workdir.join(FILE)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    after: u64,
    #[serde(default)]
    state: Option<Value>,
}

/// The job's request, checked as the API will check it; an error says what is wrong.
pub fn read(workdir: &Path) -> Result<(u64, Option<Value>), String> {
    let path = file(workdir);
    let meta = std::fs::metadata(&path).map_err(|e| format!("exit {EXIT_CONTINUE} without {}: {e}", path.display()))?;
    if meta.len() > (MAX_STATE_BYTES + 1024) as u64 {
        return Err(format!("{} is {} bytes; state is at most {MAX_STATE_BYTES}", path.display(), meta.len()));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let r: Request = serde_json::from_str(&text)
        .map_err(|e| format!("{}: expected {{\"after\": seconds, \"state\": any}}: {e}", path.display()))?;
    if r.after > MAX_CONTINUE_AFTER_S {
        return Err(format!("{}: after is at most {MAX_CONTINUE_AFTER_S} seconds", path.display()));
    }
    Ok((r.after, r.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_request_and_says_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap_err().contains("without"));
        std::fs::write(file(dir.path()), r#"{"after": 30, "state": {"cursor": 7}}"#).unwrap();
        assert_eq!(read(dir.path()).unwrap(), (30, Some(serde_json::json!({"cursor": 7}))));
        std::fs::write(file(dir.path()), r#"{"afterr": 30}"#).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("expected"));
        std::fs::write(file(dir.path()), format!(r#"{{"after": {}}}"#, MAX_CONTINUE_AFTER_S + 1)).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("at most"));
    }
}
