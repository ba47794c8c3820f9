//! A minimal W3C WebDriver client over Debian's chromedriver and headless Chromium.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A minimal W3C WebDriver client over chromedriver, enough to log in, wait and screenshot.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    driver: Child,
}

impl Browser {
    pub async fn start() -> (Browser, String) {
        assert!(
            Path::new("/usr/bin/chromedriver").exists(),
            "chromedriver is missing: apt-get install chromium chromium-driver (scripts/test does it)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let browser = Browser {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
            driver,
        };
        let profile = tempfile::tempdir().unwrap().keep();
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let mut session = None;
        for _ in 0..100 {
            if let Ok(r) = browser
                .http
                .post(format!("{}/session", browser.base))
                .json(&capabilities)
                .send()
                .await
            {
                let v: serde_json::Value = r.json().await.unwrap();
                session = Some(
                    v["value"]["sessionId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("no session: {v}"))
                        .to_owned(),
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (browser, session.expect("chromedriver answers"))
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let r = request.send().await.unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    pub async fn element(&self, session: &str, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/session/{session}/element"),
                serde_json::json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Polls a script until it returns true (the page refreshes itself every 2 s).
    pub async fn wait_for(&self, session: &str, script: &str, what: &str) {
        for _ in 0..100 {
            let v = self
                .call(
                    reqwest::Method::POST,
                    &format!("/session/{session}/execute/sync"),
                    serde_json::json!({"script": script, "args": []}),
                )
                .await;
            if v == serde_json::Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
