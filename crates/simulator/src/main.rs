//! `responses-router-simulator`: one simulated OpenAI-compatible model server (a vLLM-like
//! replica with its own response store), for the local stack, the tests and the benchmarks.

use std::process::ExitCode;

use clap::Parser;
use responses_router_simulator::SimulateArgs;

/// Run one simulated OpenAI-compatible model server.
#[derive(Parser)]
#[command(name = "responses-router-simulator", version)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(responses_router_simulator::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("responses-router-simulator: {e}");
            ExitCode::FAILURE
        }
    }
}
