//! The status page of `lineup dev`, in a real headless browser: Debian's chromium
//! driven through chromedriver (both installed by `make test`). The page shows a pool
//! created through the API, and an eval submitted through the API moves to `complete`
//! on screen without a reload; the token lives in session storage, never in a URL.
//! `make screenshot` runs this test with LINEUP_SCREENSHOT=docs/status-page.png.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use lineup_client::SubmitEval;
use lineup_tests::{poll_n, TestApp};
use serde_json::json;

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver: `make test` installs Debian's chromium and chromium-driver");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    lineup_tests::wait_for_async(Duration::from_secs(20), || {
        let status = status.clone();
        async move { reqwest::get(&status).await.ok().filter(|r| r.status().is_success()) }
    })
    .await;
    Driver { child, url }
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            // --no-sandbox: CI runs as root, where chromium's sandbox cannot start.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
        }
    });
    let serde_json::Value::Object(caps) = caps else { unreachable!() };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

/// Waits until `css` matches an element on the page (without reloading it).
async fn shown(b: &Client, css: &str) -> fantoccini::elements::Element {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(e) = b.find(Locator::Css(css)).await {
            return e;
        }
        if tokio::time::Instant::now() >= end {
            let text = b.find(Locator::Css("body")).await.unwrap().text().await.unwrap_or_default();
            panic!("{css} never showed; the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_pools_and_evals_live() {
    let app = TestApp::spawn().await;
    let driver = chromedriver().await;
    let b = browser(&driver).await;

    // `/` leads to the page; it asks for the token.
    b.goto(&format!("{}/", app.endpoint)).await.unwrap();
    assert!(b.current_url().await.unwrap().path().ends_with("/ui"));
    let input = shown(&b, "#token").await;
    input.send_keys(&app.token).await.unwrap();
    b.find(Locator::Css("#signin button")).await.unwrap().click().await.unwrap();
    shown(&b, "#signout:not([hidden])").await;
    // A marker that a reload would lose.
    b.execute("window.__sameDocument = true;", vec![]).await.unwrap();

    // A pool made through the API appears.
    let admin = &app.admin;
    let pool = admin.create_pool(None).await.unwrap();
    let p = &pool.pool_id;
    shown(&b, &format!("[data-pool='{p}']")).await;
    let w = admin.register_worker(p, 4).await.unwrap();
    shown(&b, &format!("[data-worker='{}']", w.worker_id)).await;

    // An eval moves to complete on screen.
    let e = admin.submit_eval(p, &SubmitEval { size: 2, ..Default::default() }).await.unwrap();
    shown(&b, &format!("[data-eval='{}'] [data-status='placed']", e.eval_id)).await;
    let me = admin.with_token(w.token.as_deref().unwrap());
    let a = poll_n(&me, p, &w.worker_id, 1).await.remove(0);
    me.complete(p, a.alloc_id.as_str(), 0, None).await.unwrap();
    shown(&b, &format!("[data-eval='{}'] [data-status='complete']", e.eval_id)).await;

    // A dead eval, sent back from the page.
    let dead = admin.submit_eval(p, &SubmitEval { size: 1, ..Default::default() }).await.unwrap();
    for _ in 0..4 {
        let a = poll_n(&me, p, &w.worker_id, 1).await.remove(0);
        me.fail(p, a.alloc_id.as_str(), "boom").await.unwrap();
    }
    let row = shown(&b, &format!("[data-dead='{}'] button", dead.eval_id)).await;
    row.click().await.unwrap();
    let back = poll_n(&me, p, &w.worker_id, 1).await.remove(0);
    assert_eq!((back.eval_id.as_str(), back.attempt), (dead.eval_id.as_str(), 5), "redriven from the page");
    shown(&b, &format!("[data-eval='{}'] [data-status='placed']", dead.eval_id)).await;
    assert!(!b.find(Locator::Css("#signin")).await.unwrap().is_displayed().await.unwrap(), "signed in");

    let same = b.execute("return window.__sameDocument === true;", vec![]).await.unwrap();
    assert_eq!(same, json!(true), "the page updated without a reload");
    let stored = b.execute("return sessionStorage.getItem('lineup.token');", vec![]).await.unwrap();
    assert_eq!(stored, json!(app.token), "the token is kept in session storage");
    let url = b.current_url().await.unwrap();
    assert!(!url.as_str().contains(&app.token), "no token in the URL: {url}");

    if let Ok(path) = std::env::var("LINEUP_SCREENSHOT") {
        let png = b.screenshot().await.unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
    b.close().await.unwrap();
}
