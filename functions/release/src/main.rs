//! The `release` function: invoked every minute by EventBridge, it takes back expired
//! allocs, workers and replicas (`lineup_lambda::release`).

use lambda_runtime::{service_fn, Error};
use lineup_lambda::{Deps, Role};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lineup_lambda::init_tracing();
    let deps = Deps::from_env(Role::Release).await?;
    let deps = &deps;
    lambda_runtime::run(service_fn(move |event| async move { lineup_lambda::release(event, deps).await })).await
}
