//! `tracer --pid PID`: see the library's documentation for the data flow.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = tracer::cli::parse();
    match tracer::run::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
