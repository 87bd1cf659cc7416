//! The simulator as the stack, the tests and the Kubernetes dev overlay start it: its flags, and
//! a clear refusal of a configuration it cannot serve.

use std::process::Command;

fn simulator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_responses-router-simulator"))
        .args(args)
        .output()
        .expect("the simulator binary runs")
}

#[test]
fn help_lists_the_flags_the_stack_and_manifests_use() {
    let out = simulator(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--instance",
        "--models",
        "--chunk-delay-ms",
        "--stream-chunks",
        "--max-store-mib",
    ] {
        assert!(help.contains(flag), "missing {flag} in {help}");
    }
}

#[test]
fn no_model_to_serve_is_refused_before_listening() {
    let out = simulator(&["--listen", "127.0.0.1:0", "--models", " "]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--models needs at least one model name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
