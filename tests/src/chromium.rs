//! A headless Chromium driven over the DevTools protocol: launch, navigate, read the page,
//! click like a user (mouse events at an element's centre), take screenshots.
//!
//! The protocol is JSON over a WebSocket; the few commands the dashboard tests need fit in
//! this file, where a CDP crate would generate (and compile) the whole protocol.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A running headless Chromium with one page, killed on drop.
pub struct Chromium {
    child: tokio::process::Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    profile: PathBuf,
}

impl Chromium {
    /// Starts `binary` headless with a fresh profile and opens a page.
    ///
    /// # Panics
    ///
    /// When it does not start or its DevTools endpoint does not answer within 30 s.
    pub async fn launch(binary: &str) -> Self {
        let profile =
            std::env::temp_dir().join(format!("outbox-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let child = tokio::process::Command::new(binary)
            .args([
                "--headless=new",
                // Root in a container has no user namespace for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1280,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        // Chromium writes the port it chose, and the browser endpoint's path, to this file.
        let port_file = profile.join("DevToolsActivePort");
        let url = crate::wait_for(
            "Chromium's DevTools port",
            Duration::from_secs(30),
            || async {
                let text = std::fs::read_to_string(&port_file).ok()?;
                let mut lines = text.lines();
                let (port, path) = (lines.next()?, lines.next()?);
                Some(format!("ws://127.0.0.1:{port}{path}"))
            },
        )
        .await;
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to DevTools");
        let mut browser = Self {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            profile,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        browser.call("Page.enable", json!({})).await;
        browser
    }

    /// Sends a command (to the page once attached) and returns its result, skipping events.
    ///
    /// # Panics
    ///
    /// When the browser answers with an error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"))
                .expect("DevTools closed")
                .expect("DevTools frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if v["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(e) = v.get("error") {
                panic!("{method}: {e}");
            }
            return v["result"].clone();
        }
    }

    /// Evaluates `expr` in the page and returns its value (promises awaited).
    ///
    /// # Panics
    ///
    /// When it throws.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Loads `url` and waits until the document is complete.
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_loaded(url).await;
    }

    /// Waits until the page is a complete document whose address starts with `prefix`.
    pub async fn wait_loaded(&mut self, prefix: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = self
                .eval("[document.readyState, location.href, window.__outbox_old === true]")
                .await;
            if v[0] == "complete"
                && v[1].as_str().is_some_and(|h| h.starts_with(prefix))
                && v[2] != true
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "page {prefix} did not load: {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text content of the first element matching `selector`, if there is one.
    pub async fn text(&mut self, selector: &str) -> Option<String> {
        let expr = format!(
            "(() => {{ const e = document.querySelector({}); return e ? e.textContent : null; }})()",
            json!(selector)
        );
        self.eval(&expr).await.as_str().map(str::to_owned)
    }

    /// The number in the first element matching `selector`.
    ///
    /// # Panics
    ///
    /// When there is none, or it holds no number.
    pub async fn number(&mut self, selector: &str) -> u64 {
        let text = self
            .text(selector)
            .await
            .unwrap_or_else(|| panic!("no {selector} on the page"));
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{selector} holds {text:?}, not a number"))
    }

    /// Clicks the centre of the first element matching `selector` with the mouse, and waits
    /// for the page it leads to (whose address starts with `then`).
    ///
    /// # Panics
    ///
    /// When there is no such element.
    pub async fn click(&mut self, selector: &str, then: &str) {
        let expr = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             window.__outbox_old = true; return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            json!(selector)
        );
        let at = self.eval(&expr).await;
        let (x, y) = match (at[0].as_f64(), at[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => panic!("no {selector} to click"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
        self.wait_loaded(then).await;
    }

    /// Saves a PNG of the whole page at `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where screenshots go: `target/dashboard-screenshots/` (of `CARGO_TARGET_DIR` when set), a
/// directory CI keeps as an artifact.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dashboard-screenshots")
}
