//! The `gateway` function: the REST API behind API Gateway (REST v1 or HTTP API v2),
//! the same axum router `lineup dev` serves.

fn main() -> std::process::ExitCode {
    lineup_lambda::main(Some(lineup_lambda::Role::Gateway))
}
