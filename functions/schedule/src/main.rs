//! The `schedule` function: invoked every minute by EventBridge, it places evals from
//! every active pool until its deadline minus a safety margin (`lineup_lambda::schedule`).

use lambda_runtime::{service_fn, Error};
use lineup_lambda::{Deps, Role};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lineup_lambda::init_tracing();
    // Settings from LINEUP_*, SDK clients built once per instance.
    let deps = Deps::from_env(Role::Schedule).await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event| async move { lineup_lambda::schedule(event, deps).await })).await
}
