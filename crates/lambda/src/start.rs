//! What every bootstrap's `main` does: configure from the environment, then serve
//! invocations until the runtime stops.
//!
//! A configuration error is not just printed: it is posted to the Runtime API's
//! `/init/error`, as a custom runtime should, so the invocation that started the
//! instance fails with `Lineup.Config` and the message (what an operator sees in
//! `aws lambda invoke` and in the function's errors), and the process exits 1.

use std::process::ExitCode;

use crate::{role_for, Deps, LambdaError, Role};

/// `fixed`: the role of a single-purpose binary; `None` picks it from the function's
/// name (the `dispatch` bootstrap).
pub fn main(fixed: Option<Role>) -> ExitCode {
    // Sets the environment, so before the runtime starts any thread.
    crate::ignore_stage_in_path();
    crate::init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lineup: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let started = match fixed {
            Some(role) => Ok(role),
            None => {
                let name = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
                role_for(&name, Some(&name))
            }
        };
        let started = match started {
            Ok(role) => Deps::from_env(role).await.map(|deps| (role, deps)),
            Err(e) => Err(e),
        };
        match started {
            Ok((role, deps)) => match crate::run(role, deps).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "runtime loop ended");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                // Spelled out as well: the log subscriber may not reach the console.
                eprintln!("lineup: {e}");
                report_init_error(&e).await;
                ExitCode::FAILURE
            }
        }
    })
}

async fn report_init_error(e: &LambdaError) {
    use lambda_runtime_api_client::{body::Body, build_request, Client};
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else { return };
    let diagnostic = crate::diagnostic(e);
    let (Ok(body), Ok(uri)) = (serde_json::to_vec(&diagnostic), format!("http://{api}").parse()) else {
        return;
    };
    let Ok(req) = build_request()
        .method("POST")
        .uri("/2018-06-01/runtime/init/error")
        .header("lambda-runtime-function-error-type", diagnostic.error_type.as_str())
        .body(Body::from(body))
    else {
        return;
    };
    let sent = match Client::builder().with_endpoint(uri).build() {
        Ok(client) => match client.call(req).await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("status {}", resp.status()).into()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e.into()),
    };
    if let Err(err) = sent {
        eprintln!("lineup: could not report the error to the Runtime API: {err}");
    }
}
