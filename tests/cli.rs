//! The command line as users and scripts call it: `validate` exit codes and messages, and
//! `explain` printing the decision the service would make.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn router(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_responses-router"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("binary exits")
}

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/routing.yaml");

#[test]
fn validate_accepts_the_shipped_config() {
    let out = router(&["validate", "--config", SHIPPED], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (3 models, 3 clusters, 2 categories)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  embedding model: wordllama model, 32000 tokens x 256 dims, F16"),
        "{stdout}"
    );
}

#[test]
fn validate_counts_in_the_singular_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.yaml");
    std::fs::write(
        &path,
        "default_model: m\nmodels: [{ name: m, clusters: [{ name: c }] }]\n\
         categories: [{ name: k, model: m, keywords: [x] }]\n",
    )
    .unwrap();
    let out = router(&["validate", "--config", path.to_str().unwrap()], b"");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (1 model, 1 cluster, 1 category)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn validate_names_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "default_model: nope\nmodels: [{ name: m, clusters: [{ name: c }] }]\n\
         categories: [{ name: k, model: gone, patterns: ['(x'] }]\n",
    )
    .unwrap();
    let out = router(&["validate", "--config", path.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "default_model: unknown model `nope`",
        "categories[0].model: unknown model `gone`",
        "categories[0].patterns[0]: invalid regex",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in {err}");
    }
}

#[test]
fn explain_prints_the_decision_from_stdin() {
    let body = br#"{"model":"auto","input":"refactor this rust code"}"#;
    let out = router(
        &["explain", "--config", SHIPPED, "--path", "/v1/responses"],
        body,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON decision");
    assert_eq!(decision["model"], "code-model");
    assert_eq!(decision["cluster"], "code");
    assert_eq!(decision["reason"], "category");
    assert_eq!(decision["category"], "coding");
    assert_eq!(decision["text"], "refactor this rust code");
    assert_eq!(decision["scores"][0]["score"], 3);
    // With the shipped embedding model: each category's similarity, threshold and combined score.
    let coding = &decision["scores"][0];
    let similarity = coding["similarity"].as_f64().expect("a similarity");
    assert_eq!(coding["min_similarity"], 0.15);
    let combined = coding["combined"].as_f64().expect("a combined score");
    assert!((combined - (similarity + 0.1)).abs() < 2e-4, "{coding}");
    assert!(decision["scores"][1]["similarity"].as_f64().unwrap() < similarity);
}

#[test]
fn explain_shows_a_category_chosen_by_meaning_alone() {
    let body =
        br#"{"model":"auto","input":"Why is my recursive descent parser so slow on long inputs?"}"#;
    let out = router(
        &["explain", "--config", SHIPPED, "--path", "/v1/responses"],
        body,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON decision");
    assert_eq!(decision["model"], "code-model");
    assert_eq!(decision["category"], "coding");
    for category in decision["scores"].as_array().unwrap() {
        assert_eq!(category["score"], 0, "no keyword or pattern: {category}");
    }
    assert!(decision["scores"][0]["similarity"].as_f64().unwrap() >= 0.15);
}

#[test]
fn a_rules_only_config_explains_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(
        &path,
        "default_model: m\nmodels: [{ name: m, clusters: [{ name: c }] }]\n\
         categories: [{ name: k, model: m, keywords: [x] }]\n",
    )
    .unwrap();
    let out = router(
        &[
            "explain",
            "--config",
            path.to_str().unwrap(),
            "--path",
            "/v1/responses",
        ],
        br#"{"model":"auto","input":"x"}"#,
    );
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON decision");
    assert_eq!(
        decision["scores"],
        serde_json::json!([{"category": "k", "score": 1}])
    );
}

#[test]
fn validate_names_a_missing_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "default_model: m\nmodels: [{ name: m, clusters: [{ name: c }] }]\n\
         classification: { embedding: { model_dir: no-such-model } }\n\
         categories: [{ name: k, model: m, examples: [\"an example\"] }]\n",
    )
    .unwrap();
    let out = router(&["validate", "--config", path.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Relative to the routing YAML's own directory.
    let expected = format!(
        "classification.embedding.model_dir: {}: No such file",
        dir.path().join("no-such-model").display()
    );
    assert!(err.contains(&expected), "missing {expected:?} in {err}");
}

#[test]
fn explain_shows_the_error_a_client_would_get() {
    let out = router(
        &["explain", "--config", SHIPPED, "--path", "/v1/responses"],
        br#"{"model":"x","input":"a"}"#,
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("HTTP 404\n"), "{stdout}");
    assert!(stdout.contains(r#""code":"model_not_found""#), "{stdout}");
}

#[test]
fn serve_refuses_unusable_tls_settings_as_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let socket = dir.path().join("router.sock");
    let serve = ["serve", "--config", SHIPPED, "--admin-listen", "none"];
    let tls = [
        "--tls-cert",
        missing,
        "--tls-key",
        missing,
        "--tls-client-ca",
        missing,
    ];
    let cases: [(Vec<&str>, &str); 3] = [
        // The three files go together.
        (vec!["--tls-cert", missing], "--tls-key"),
        // TLS secures the TCP listener; a Unix socket has none.
        (
            [
                &["--listen", "none", "--uds", socket.to_str().unwrap()][..],
                &tls,
            ]
            .concat(),
            "secure the TCP listener",
        ),
        (
            [&["--listen", "127.0.0.1:0"][..], &tls].concat(),
            "TLS: cannot read",
        ),
    ];
    for (args, expected) in cases {
        let out = router(&[&serve[..], &args].concat(), b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
