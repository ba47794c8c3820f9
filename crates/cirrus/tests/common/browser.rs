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

impl Browser {
    pub async fn goto(&self, session: &str, url: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/session/{session}/url"),
            serde_json::json!({ "url": url }),
        )
        .await;
    }

    pub async fn click(&self, session: &str, css: &str) {
        let element = self.element(session, css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/session/{session}/element/{element}/click"),
            serde_json::json!({}),
        )
        .await;
    }

    /// Replaces what the input `css` holds with `text`.
    pub async fn type_into(&self, session: &str, css: &str, text: &str) {
        let element = self.element(session, css).await;
        for (action, body) in [
            ("clear", serde_json::json!({})),
            ("value", serde_json::json!({ "text": text })),
        ] {
            self.call(
                reqwest::Method::POST,
                &format!("/session/{session}/element/{element}/{action}"),
                body,
            )
            .await;
        }
    }

    /// A screenshot of the page, checked to be a real PNG and saved as `name` in the
    /// test's temporary folder.
    pub async fn screenshot(&self, session: &str, name: &str) {
        use base64::Engine as _;
        let png = self
            .call(
                reqwest::Method::GET,
                &format!("/session/{session}/screenshot"),
                serde_json::Value::Null,
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 screenshot"))
            .expect("valid base64");
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "a real screenshot"
        );
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&shot, &png).expect("saving the screenshot");
        eprintln!("screenshot: {}", shot.display());
    }

    pub async fn close(&self, session: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/session/{session}"),
            serde_json::Value::Null,
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
