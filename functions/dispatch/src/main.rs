//! One `bootstrap` for all three functions, as in the Go original: the function's name
//! (`AWS_LAMBDA_FUNCTION_NAME`, the last part of its ARN) picks the handler by suffix
//! (`-schedule`, `-release`, `-gateway`); anything else fails at start, naming them.

use lambda_runtime::Error;
use lineup_lambda::{role_for, Deps};

fn main() -> Result<(), Error> {
    lineup_lambda::ignore_stage_in_path();
    lineup_lambda::init_tracing();
    let name = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
    let role = match role_for(&name, Some(&name)) {
        Ok(role) => role,
        Err(e) => {
            // Spelled out: `main`'s error would print only its Debug form.
            eprintln!("lineup: {e}");
            std::process::exit(2);
        }
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let deps = Deps::from_env(role).await?;
        lineup_lambda::run(role, deps).await
    })
}
