//! One `bootstrap` for all three functions, as in the Go original: the function's name
//! (`AWS_LAMBDA_FUNCTION_NAME`, the last part of its ARN) picks the handler by suffix
//! (`-schedule`, `-release`, `-gateway`); anything else fails at start, naming them.

fn main() -> std::process::ExitCode {
    lineup_lambda::main(None)
}
