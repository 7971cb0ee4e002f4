//! The OpenAPI contract (`GET /openapi.json`) against the real `lineup dev`:
//! schemathesis (installed into `.venv` by `make test`) calls every `/v1` operation
//! with the admin token and fails on any 5xx, any response that does not match the
//! document, and any request the document forbids that the server accepts. The event
//! stream is left out of the run: it answers with a stream that does not end.

use std::process::Command;

use lineup_tests::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_covers_every_v1_route() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value =
        reqwest::get(format!("{}/openapi.json", app.endpoint)).await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let want = [
        ("/v1/pools", &["get", "post"][..]),
        ("/v1/pools/{pool}", &["get", "patch", "delete"]),
        ("/v1/pools/{pool}/health", &["put"]),
        ("/v1/pools/{pool}/workers", &["get", "post"]),
        ("/v1/pools/{pool}/workers/{worker}/heartbeat", &["post"]),
        ("/v1/pools/{pool}/workers/{worker}/poll", &["post"]),
        ("/v1/pools/{pool}/evals", &["get", "post"]),
        ("/v1/pools/{pool}/evals/{eval}", &["get", "delete"]),
        ("/v1/pools/{pool}/dead-letters", &["get"]),
        ("/v1/pools/{pool}/dead-letters/redrive", &["post"]),
        ("/v1/pools/{pool}/allocs/{alloc}/complete", &["post"]),
        ("/v1/pools/{pool}/allocs/{alloc}/fail", &["post"]),
        ("/v1/pools/{pool}/pipelines", &["get", "post"]),
        ("/v1/pools/{pool}/pipelines/{pipeline}", &["get", "delete"]),
        ("/v1/events", &["get"]),
    ];
    assert_eq!(paths.len(), want.len(), "{:?}", paths.keys().collect::<Vec<_>>());
    for (path, methods) in want {
        for m in methods {
            let op = &paths[path][m];
            assert!(op.is_object(), "{m} {path} is not in the document");
            assert!(op["responses"]["default"].is_object(), "{m} {path}: its errors are not described");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let app = TestApp::spawn().await;
    let st = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/st");
    assert!(st.exists(), "{} not found: run `make test` (it installs schemathesis into .venv)", st.display());
    let auth = format!("Authorization: Bearer {}", app.token);
    // Its example database and reports go to a directory of its own, not the tree.
    let scratch = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::from(Command::new(st))
        .current_dir(scratch.path())
        .arg("run")
        .arg(format!("{}/openapi.json", app.endpoint))
        .args(["-H", &auth])
        .args(["--checks", "not_a_server_error,response_schema_conformance,negative_data_rejection"])
        .args(["--exclude-path", "/v1/events"])
        .args(["--max-examples", "50", "--seed", "7", "--request-timeout", "30", "--continue-on-failure"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("22 passed"), "every operation but the stream was tested:\n{text}");
    assert!(!text.contains(&app.token), "the token stays out of the report");
}
