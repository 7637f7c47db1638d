//! Test kit: a real HTTP receiver on 127.0.0.1:0 that records every request and
//! answers with the statuses a test scripts, and a helper that waits for a
//! condition with a deadline.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod api;
pub mod browser;
pub mod nats;
pub mod server;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// The client's address: one per TCP connection.
    pub peer: SocketAddr,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .unwrap_or("")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: Vec::new(),
        }
    }
    pub fn body(mut self, b: &str) -> Self {
        self.body = b.as_bytes().to_vec();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    default: Mutex<HashMap<String, Reply>>,
}

/// The receiver; it stops when dropped.
pub struct TestReceiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    s.received.lock().unwrap().push(Received {
        path: path.clone(),
        peer,
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    });
    let reply = s
        .script
        .lock()
        .unwrap()
        .get_mut(&path)
        .and_then(VecDeque::pop_front)
        .or_else(|| s.default.lock().unwrap().get(&path).cloned())
        .unwrap_or(Reply::status(200));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    let mut resp = if reply.body.is_empty() {
        status.into_response()
    } else {
        // As many servers do, the head goes out first and the body in a later
        // write: the client sees the response before its body has arrived.
        let body = Bytes::from(reply.body);
        let later = futures_util::stream::once(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, std::convert::Infallible>(body)
        });
        (status, axum::body::Body::from_stream(later)).into_response()
    };
    for (k, v) in reply.headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    resp
}

impl TestReceiver {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        TestReceiver { addr, shared, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next answers for `path`, then the default (200 unless set).
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.shared
            .script
            .lock()
            .unwrap()
            .insert(path.into(), replies.into());
    }

    /// The answer for `path` once the script is used up.
    pub fn set_default(&self, path: &str, reply: Reply) {
        self.shared
            .default
            .lock()
            .unwrap()
            .insert(path.into(), reply);
    }

    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits (up to `timeout`) until `path` got at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        wait_until(timeout, || self.requests(path).len() >= n).await;
        self.requests(path)
    }
}

/// Every file below `dir`, in any folder depth (none if `dir` is missing).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The built binary with `args`, run in `dir` with its log directory
/// `<dir>/logs`, `secret` as `WEBHOOK_SIGNATURE_SECRET` and no `RUST_LOG`.
pub fn pm_command(dir: &std::path::Path, args: &[&str], secret: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pm-events"));
    c.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("PM_LOG_DIR", dir.join("logs"))
        .env("WEBHOOK_SIGNATURE_SECRET", secret);
    c
}

/// A TCP port on 127.0.0.1 that nothing listens on (bound, noted, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` until it holds; panics after `timeout`.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads every JSON line of a `.jsonl` file.
pub fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The Python interpreter with `standardwebhooks` (and `aiosmtpd`) installed:
/// `PM_TEST_PYTHON` (set by scripts/test.sh), else `python3`.
pub fn python() -> String {
    let py = std::env::var("PM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import standardwebhooks"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{py} cannot import standardwebhooks: run the tests with scripts/test.sh, which installs it, or set PM_TEST_PYTHON"
    );
    py
}

/// Runs the script `tests/py/<script>` with `args` and `body` on stdin, under
/// [`python`]: (exit 0, stdout trimmed followed by stderr).
pub fn py_script(script: &str, args: &[&str], body: &[u8]) -> (bool, String) {
    use std::io::Write as _;
    use std::process::Stdio;
    let path = format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new(python())
        .arg(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string()
        + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every event of the event log files (`events/events_*.log`) under `logs`.
pub fn logged(logs: &std::path::Path) -> Vec<serde_json::Value> {
    let Ok(rd) = std::fs::read_dir(logs.join("events")) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .flat_map(|p| jsonl(&p))
        .collect()
}

/// A handler that counts the events it sees, and the count.
pub fn counter() -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    impl Fn(pm_events::Event) -> std::future::Ready<Result<(), std::convert::Infallible>>
    + Send
    + Sync
    + 'static,
) {
    let c = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = c.clone();
    (c, move |_e: pm_events::Event| {
        c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok(()))
    })
}
