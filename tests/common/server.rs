//! The built binary's `serve` on 127.0.0.1:0, and a real HTTP client for it.

use pm_events::config::Secret;
use pm_events::webhook::sign::Signer;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The incoming-webhook secret every test server is started with.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct Server {
    pub child: Child,
    pub url: String,
    pub logs: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::spawn(dir, env, &[], Stdio::null())
    }

    /// Like `start`, with more `serve` flags (`--body-timeout 1s`), keeping stderr.
    pub fn start_with(dir: &Path, env: &[(&str, &str)], flags: &[&str]) -> Server {
        Self::spawn(dir, env, flags, stderr_file(dir))
    }

    /// Like `start`, keeping what the server writes to stderr (see [`Server::stderr`]).
    pub fn start_capturing(dir: &Path, env: &[(&str, &str)]) -> Server {
        Self::spawn(dir, env, &[], stderr_file(dir))
    }

    fn spawn(dir: &Path, env: &[(&str, &str)], flags: &[&str], stderr: Stdio) -> Server {
        let logs = dir.join("logs");
        let mut c = Command::new(env!("CARGO_BIN_EXE_pm-events"));
        c.args(["serve", "--bind", "127.0.0.1:0"])
            .args(flags)
            .env_remove("RUST_LOG")
            .env("PM_LOG_DIR", &logs)
            .env("WEBHOOK_SIGNATURE_SECRET", SECRET)
            // The tests' receivers listen on loopback, which managed endpoints may
            // reach only when allowed (a test of the guard sets this to "").
            .env("PM_ENDPOINT_ALLOW_NETS", "127.0.0.0/8")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        Server { child, url, logs }
    }

    /// What the server wrote to stderr so far (its diagnostics).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.with_file_name("serve.stderr")).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

/// `<dir>/serve.stderr`, appended to by each server started on `dir`.
fn stderr_file(dir: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("serve.stderr"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub fn signer() -> Signer {
    Signer::new(&Secret::new(SECRET)).unwrap()
}

pub async fn post(url: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
    try_post(url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// Like [`post`], but a connection or read error (a killed server) is an `Err`.
pub async fn try_post(
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Value), reqwest::Error> {
    post_with(&client(), url, headers, body).await
}

/// Like [`try_post`], on a client the caller keeps (its connections are reused).
pub async fn post_with(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = client.post(url).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Standard Webhooks headers (and JSON content type) for `body`.
pub fn standard(id: &str, ts: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let s = signer();
    vec![
        ("content-type", "application/json".into()),
        ("webhook-id", id.into()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", s.standard_signature(id, ts, body)),
    ]
}
