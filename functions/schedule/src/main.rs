//! The `schedule` function: invoked every minute by EventBridge, it places evals from
//! every active pool until its deadline minus a safety margin (`lineup_lambda::schedule`).

fn main() -> std::process::ExitCode {
    lineup_lambda::main(Some(lineup_lambda::Role::Schedule))
}
