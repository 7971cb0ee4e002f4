//! The `release` function: invoked every minute by EventBridge, it takes back expired
//! allocs, workers and replicas (`lineup_lambda::release`).

fn main() -> std::process::ExitCode {
    lineup_lambda::main(Some(lineup_lambda::Role::Release))
}
