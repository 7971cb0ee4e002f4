//! The `gateway` function: the REST API behind API Gateway (REST v1 or HTTP API v2),
//! the same axum router `lineup dev` serves.

use lambda_runtime::Error;
use lineup_lambda::{Deps, Role};

fn main() -> Result<(), Error> {
    // Sets the environment, so before the runtime starts any thread.
    lineup_lambda::ignore_stage_in_path();
    lineup_lambda::init_tracing();
    tokio::runtime::Runtime::new()?.block_on(async {
        let deps = Deps::from_env(Role::Gateway).await?;
        lineup_lambda::run(Role::Gateway, deps).await
    })
}
