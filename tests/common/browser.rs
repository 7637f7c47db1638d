//! A real headless Chromium, driven over WebDriver: Debian's `chromium` and
//! `chromedriver` (scripts/test.sh installs them), spoken to with `fantoccini`.
//!
//! Each [`Browser`] runs its own chromedriver on a free port with a fresh
//! profile, in a process group of its own, so the browser processes end with it
//! even when a test fails.

use super::free_port;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a page has to show what a test waits for.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// The width of the phone the page is tried on.
pub const PHONE_WIDTH: u32 = 390;

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the browser it started share its process group.
        let pgid = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.driver.wait();
    }
}

/// A program named by the environment variable `var`, or found on PATH as one of `names`.
fn program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// A chromedriver command of the session beyond the W3C set: `POST
/// /session/{id}/<path>` with a JSON body — `se/log` (the console log it keeps),
/// `goog/cdp/execute` (a DevTools command).
#[derive(Debug)]
struct SessionCommand {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for SessionCommand {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

impl Browser {
    /// Slows the page's CPU down `rate` times, as on a slow laptop.
    pub async fn throttle_cpu(&self, rate: f64) {
        self.client
            .issue_cmd(SessionCommand {
                path: "goog/cdp/execute",
                body: json!({"cmd": "Emulation.setCPUThrottlingRate", "params": {"rate": rate}}),
            })
            .await
            .unwrap();
    }

    /// A desktop window (1280 × 900), or with `phone` a 390 px wide phone screen.
    pub async fn start(phone: bool) -> Browser {
        let driver_bin = program("PM_TEST_CHROMEDRIVER", &["chromedriver"]).expect(
            "chromedriver not found: install chromium and chromium-driver (scripts/test.sh does), or set PM_TEST_CHROMEDRIVER",
        );
        let port = free_port();
        let mut cmd = Command::new(driver_bin);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().expect("start chromedriver");
        let deadline = Instant::now() + PAGE_WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut options = json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        if let Some(chromium) = program("PM_TEST_CHROMIUM", &["chromium", "chromium-browser"]) {
            options["binary"] = json!(chromium);
        }
        if phone {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": PHONE_WIDTH, "height": 844, "pixelRatio": 2.0, "touch": true, "mobile": true},
            });
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("start a Chromium session");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The first element matching `css`, once there is one.
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(PAGE_WAIT)
            .every(Duration::from_millis(25))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} did not appear within {PAGE_WAIT:?}: {e}"))
    }

    /// Waits until no element matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + PAGE_WAIT;
        while !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "{css} still there after {PAGE_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the text of `css` contains `text`.
    pub async fn wait_text(&self, css: &str, text: &str) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let got = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if got.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} did not say {text:?} within {PAGE_WAIT:?} (it says {got:?})"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `script` gives `expected`.
    pub async fn wait_js(&self, script: &str, expected: Value) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let got = self.js(script).await;
            if got == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{script} gave {got}, not {expected}, within {PAGE_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Presses and releases Tab, as a keyboard user moves on.
    pub async fn press_tab(&self) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let tab = fantoccini::key::Key::Tab.into();
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: tab })
            .then(KeyAction::Up { value: tab });
        self.client.perform_actions(keys).await.unwrap();
    }

    /// Whether the element `css` is shown.
    pub async fn shown(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Clicks the element `css`; found again if the page re-drew it meanwhile.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.click().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match clicked {
                Ok(()) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "cannot click {css} within {PAGE_WAIT:?}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Saves a screenshot as `target/screenshots/<name>.png`; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, self.client.screenshot().await.unwrap()).unwrap();
        path
    }

    /// The console messages of level SEVERE (errors, failed loads, refused content) so far.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(SessionCommand {
                path: "se/log",
                body: json!({"type": "browser"}),
            })
            .await
            .unwrap();
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["level"] == "SEVERE")
            .map(|m| m["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Every URL the page loaded or called: the document and each resource.
    pub async fn requests(&self) -> Vec<String> {
        let v = self
            .js("return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));")
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_string())
            .collect()
    }

    /// How far the page is wider than the screen, in CSS pixels (0: no horizontal scroll).
    pub async fn overflow_x(&self) -> i64 {
        self.js("const d = document.documentElement; return Math.max(d.scrollWidth, document.body.scrollWidth) - d.clientWidth;")
            .await
            .as_i64()
            .unwrap()
    }
}
