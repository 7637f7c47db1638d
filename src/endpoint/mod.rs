//! Managed webhook endpoints (docs/webhooks.md, "Endpoints").
//!
//! An endpoint is a destination with its own secret, event types, payload filter,
//! headers and delivery settings, created and changed while the server runs.
//!
//! - [`model`]: the record and the validation of its fields.
//! - [`filter`]: the payload filter language.
//! - [`keys`]: secrets and key pairs, rotation, signature headers.
//! - [`store`]: where endpoints are kept (SQLite beside the outbox, or JetStream KV).
//! - [`Endpoints`] (here): the set in memory, kept current with the store, which the
//!   fan-out and the delivery engine read and the API and CLI change.
//!
//! The route variables of the environment appear beside them as read-only
//! endpoints with `"source": "env"` ([`env_endpoints`]).

pub mod error;
pub mod filter;
pub mod guard;
pub mod keys;
pub mod kv;
pub mod model;
pub mod store;

use crate::event::Event;
use crate::webhook::route::Routes;
pub use error::EndpointError;
use filter::Filter;
use keys::{Key, Signers};
use model::Change;
pub use model::{Endpoint, FieldError, Signing, Source};
use serde_json::{Map, Value, json};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use store::{EndpointStore, StoredEndpoint};
use tokio_util::sync::CancellationToken;

/// The prefix of a managed endpoint's id.
pub const ID_PREFIX: &str = "ep_";

/// The default overlap of a secret rotation: 24 hours.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// A managed endpoint ready for use: the record, its compiled filter and signers.
#[derive(Debug)]
pub struct Managed {
    /// The record as shown.
    pub endpoint: Endpoint,
    filter: Option<Filter>,
    signers: Signers,
}

impl Managed {
    fn new(stored: &StoredEndpoint) -> Managed {
        let filter = stored
            .endpoint
            .filter
            .as_ref()
            .and_then(|f| Filter::compile(f).ok());
        Managed {
            signers: Signers::new(stored.endpoint.signing, &stored.keys),
            endpoint: stored.endpoint.clone(),
            filter,
        }
    }

    /// Whether `event` goes to this endpoint (its types and filter; enabled or not).
    pub fn wants(&self, event: &Event) -> bool {
        model::type_matches(&self.endpoint.event_types, &event.event_type)
            && self.filter.as_ref().is_none_or(|f| f.matches(event))
    }

    /// The endpoint's signers.
    pub fn signers(&self) -> &Signers {
        &self.signers
    }
}

/// Current time as RFC 3339 (UTC, milliseconds).
fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The set of endpoints. Cheap to clone; every clone sees the same set.
#[derive(Clone)]
pub struct Endpoints {
    inner: Arc<Inner>,
}

struct Inner {
    store: Box<dyn EndpointStore>,
    /// The managed endpoints as last read, sorted by id. Replaced whole after each
    /// change made here and by the watch task after a change elsewhere; readers
    /// clone the `Arc` and never hold the lock across work.
    current: RwLock<Arc<Vec<Arc<Managed>>>>,
    /// The route variables, shown read-only.
    env: Vec<Endpoint>,
    /// Serializes this process's read-modify-write changes.
    write: tokio::sync::Mutex<()>,
    /// Which addresses endpoint URLs may reach.
    guard: Arc<guard::NetGuard>,
    /// Ends the watch task (cancelled when the last clone drops, or by `close`).
    cancel: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Endpoints {
    /// The endpoints kept in `store`, beside the read-only ones of `routes`; their
    /// URLs may reach only what `guard` allows.
    pub async fn open(
        store: Box<dyn EndpointStore>,
        routes: &Routes,
        guard: guard::NetGuard,
    ) -> Result<Self, EndpointError> {
        let me = Endpoints {
            inner: Arc::new(Inner {
                store,
                current: RwLock::new(Arc::new(Vec::new())),
                env: env_endpoints(routes),
                write: tokio::sync::Mutex::new(()),
                guard: Arc::new(guard),
                cancel: CancellationToken::new(),
            }),
        };
        me.reload().await?;
        Ok(me)
    }

    /// The embedded store under `log_dir`.
    pub async fn open_local(
        log_dir: &std::path::Path,
        routes: &Routes,
        guard: guard::NetGuard,
    ) -> Result<Self, EndpointError> {
        Self::open(Box::new(store::SqliteStore::open(log_dir)?), routes, guard).await
    }

    /// The address guard of the endpoints' URLs.
    pub fn guard(&self) -> Arc<guard::NetGuard> {
        self.inner.guard.clone()
    }

    /// Refuses `ep`'s URL if its host is, or resolves to, an address the guard refuses.
    async fn check_reach(&self, ep: &Endpoint) -> Result<(), EndpointError> {
        let url = model::check_url(&ep.url)?;
        self.inner.guard.check_url(&url).await.map_err(|e| {
            EndpointError::Invalid(FieldError {
                field: "url".into(),
                problem: e.to_string(),
            })
        })
    }

    /// Keeps the set current with changes made by other processes (within a second)
    /// until [`close`](Self::close) or the last clone drops. Needs a Tokio runtime.
    pub fn watch(&self) {
        let weak = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let me = Endpoints { inner };
                let changed = tokio::select! {
                    _ = cancel.cancelled() => return,
                    c = me.inner.store.changed(Duration::from_millis(500)) => c,
                };
                if changed && let Err(e) = me.reload().await {
                    tracing::error!(error = %crate::error::chain(&e), "cannot read the endpoints");
                }
            }
        });
    }

    /// Ends the watch.
    pub fn close(&self) {
        self.inner.cancel.cancel();
    }

    /// Reads the store again (after another process changed it). Holds the
    /// write lock, so a change made here meanwhile is not overwritten.
    pub async fn reload(&self) -> Result<(), EndpointError> {
        let _w = self.inner.write.lock().await;
        let mut all: Vec<Arc<Managed>> = self
            .inner
            .store
            .load()
            .await?
            .iter()
            .map(|s| Arc::new(Managed::new(s)))
            .collect();
        all.sort_by(|a, b| a.endpoint.id.cmp(&b.endpoint.id));
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(all);
        Ok(())
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Managed>>> {
        self.inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Where the endpoints are kept.
    pub fn describe(&self) -> String {
        self.inner.store.describe()
    }

    /// Whether no managed endpoint exists.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Every endpoint: those of the environment first, then the managed ones by id.
    pub fn list(&self) -> Vec<Endpoint> {
        let mut out = self.inner.env.clone();
        out.extend(self.snapshot().iter().map(|m| m.endpoint.clone()));
        out
    }

    /// One endpoint.
    pub fn get(&self, id: &str) -> Option<Endpoint> {
        self.inner
            .env
            .iter()
            .find(|e| e.id == id)
            .cloned()
            .or_else(|| self.managed(id).map(|m| m.endpoint.clone()))
    }

    /// One managed endpoint, ready for use.
    pub fn managed(&self, id: &str) -> Option<Arc<Managed>> {
        let s = self.snapshot();
        s.binary_search_by(|m| m.endpoint.id.as_str().cmp(id))
            .ok()
            .map(|i| s[i].clone())
    }

    /// The managed endpoints `event` goes to (enabled or not: a disabled endpoint
    /// keeps its deliveries until it is enabled again).
    pub fn matching(&self, event: &Event) -> Vec<Arc<Managed>> {
        self.snapshot()
            .iter()
            .filter(|m| m.wants(event))
            .cloned()
            .collect()
    }

    async fn stored(&self, id: &str) -> Result<StoredEndpoint, EndpointError> {
        if self.inner.env.iter().any(|e| e.id == id) {
            return Err(EndpointError::ReadOnly(id.to_string()));
        }
        self.inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| EndpointError::NotFound(id.to_string()))
    }

    /// Stores `s` and puts it in the set in memory: one row written, one
    /// endpoint prepared, whatever the number of endpoints.
    async fn save(&self, s: &StoredEndpoint) -> Result<(), EndpointError> {
        self.inner.store.put(s).await?;
        let one = Arc::new(Managed::new(s));
        self.change_in_memory(&s.endpoint.id, Some(one));
        Ok(())
    }

    /// Replaces (`Some`) or removes (`None`) endpoint `id` in the set in memory.
    fn change_in_memory(&self, id: &str, new: Option<Arc<Managed>>) {
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<Arc<Managed>> = current.as_ref().clone();
        match (
            all.binary_search_by(|m| m.endpoint.id.as_str().cmp(id)),
            new,
        ) {
            (Ok(i), Some(m)) => all[i] = m,
            (Err(i), Some(m)) => all.insert(i, m),
            (Ok(i), None) => {
                all.remove(i);
            }
            (Err(_), None) => {}
        }
        *current = Arc::new(all);
    }

    /// Creates an endpoint from `fields` (see [`model::apply`]; besides, an HMAC
    /// endpoint may be given its `secret`, a `whsec_` secret of 24 to 64 bytes, else one
    /// is made). Returns it with its secret member (`secret` or `public_key`).
    pub async fn create(
        &self,
        fields: &Map<String, Value>,
    ) -> Result<(Endpoint, Value), EndpointError> {
        let mut fields = fields.clone();
        let given = fields
            .remove("secret")
            .map(|v| keys::given_secret(&v))
            .transpose()?;
        let fields = &fields;
        let mut ep = Endpoint::new(
            format!("{ID_PREFIX}{}", uuid::Uuid::now_v7().simple()),
            String::new(),
            Source::Api,
            now_text(),
        );
        model::apply(&mut ep, fields, Change::Create)?;
        self.check_reach(&ep).await?;
        if !ep.enabled {
            ep.disabled_reason = Some("created disabled".into());
        }
        let key = match given {
            Some(_) if ep.signing == Signing::Ed25519 => {
                return Err(FieldError {
                    field: "secret".into(),
                    problem: "an Ed25519 endpoint's key pair is made by the server".into(),
                }
                .into());
            }
            Some(k) => k,
            None => Key::generate(ep.signing)?,
        };
        let stored = StoredEndpoint {
            keys: vec![key],
            endpoint: ep,
        };
        let _w = self.inner.write.lock().await;
        self.save(&stored).await?;
        Ok((stored.endpoint.clone(), secret_member(&stored)))
    }

    /// Changes the endpoint `id` with `fields`.
    pub async fn update(
        &self,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Endpoint, EndpointError> {
        let _w = self.inner.write.lock().await;
        let mut s = self.stored(id).await?;
        model::apply(&mut s.endpoint, fields, Change::Patch)?;
        if fields.contains_key("url") {
            self.check_reach(&s.endpoint).await?;
        }
        s.endpoint.updated_at = now_text();
        self.save(&s).await?;
        Ok(s.endpoint)
    }

    /// Enables or disables `id`; a disable records `reason`.
    pub async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<Endpoint, EndpointError> {
        let _w = self.inner.write.lock().await;
        let mut s = self.stored(id).await?;
        s.endpoint.enabled = enabled;
        s.endpoint.disabled_reason =
            (!enabled).then(|| reason.unwrap_or("disabled by hand").to_string());
        s.endpoint.updated_at = now_text();
        self.save(&s).await?;
        Ok(s.endpoint)
    }

    /// Removes `id`; returns what it was.
    pub async fn remove(&self, id: &str) -> Result<Endpoint, EndpointError> {
        let _w = self.inner.write.lock().await;
        let s = self.stored(id).await?;
        self.inner.store.remove(id).await?;
        self.change_in_memory(id, None);
        Ok(s.endpoint)
    }

    /// The secret member of `id`: `{"secret": "whsec_..."}` or `{"public_key": "whpk_..."}`.
    pub async fn secret(&self, id: &str) -> Result<Value, EndpointError> {
        Ok(secret_member(&self.stored(id).await?))
    }

    /// A new key for `id`; the old ones keep signing for `overlap`. Returns the new
    /// secret member.
    pub async fn rotate(&self, id: &str, overlap: Duration) -> Result<Value, EndpointError> {
        let _w = self.inner.write.lock().await;
        let mut s = self.stored(id).await?;
        keys::rotate(
            &mut s.keys,
            s.endpoint.signing,
            overlap.as_secs_f64(),
            crate::event::now_unix(),
        )?;
        s.endpoint.updated_at = now_text();
        self.save(&s).await?;
        Ok(secret_member(&s))
    }
}

fn secret_member(s: &StoredEndpoint) -> Value {
    match s.keys.first() {
        Some(k) => {
            let (name, value) = k.shown();
            json!({ name: value })
        }
        None => json!({}),
    }
}

/// The route variables of `routes` as read-only endpoints (URLs without
/// credentials or query).
pub fn env_endpoints(routes: &Routes) -> Vec<Endpoint> {
    routes
        .iter()
        .map(|(var, url)| {
            let (types, filter) = env_selection(var);
            let mut ep = Endpoint::new(
                var.to_string(),
                crate::redact::redact_url(url),
                Source::Env,
                String::new(),
            );
            ep.description = Some(format!("from the environment variable {var}"));
            ep.event_types = types;
            ep.filter = filter;
            ep
        })
        .collect()
}

/// The types (and filter) a route variable takes: its entry of the route table, or
/// the type of a `PM_WEBHOOK_URL_<TYPE>` (lower-cased).
fn env_selection(var: &str) -> (Vec<String>, Option<Value>) {
    match crate::webhook::route::table_entry(var) {
        Some(v) => (vec![v.event_type.to_string()], v.filter()),
        None => {
            let t = var
                .strip_prefix(crate::config::CUSTOM_WEBHOOK_PREFIX)
                .unwrap_or(var)
                .to_ascii_lowercase();
            (vec![t], None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The SQLite store, counting how often every endpoint is read.
    struct CountingStore {
        real: store::SqliteStore,
        loads: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl EndpointStore for CountingStore {
        async fn load(&self) -> Result<Vec<StoredEndpoint>, EndpointError> {
            self.loads.fetch_add(1, Ordering::Relaxed);
            self.real.load().await
        }
        async fn get(&self, id: &str) -> Result<Option<StoredEndpoint>, EndpointError> {
            self.real.get(id).await
        }
        async fn put(&self, e: &StoredEndpoint) -> Result<(), EndpointError> {
            self.real.put(e).await
        }
        async fn remove(&self, id: &str) -> Result<bool, EndpointError> {
            self.real.remove(id).await
        }
        async fn changed(&self, max: Duration) -> bool {
            self.real.changed(max).await
        }
        fn describe(&self) -> String {
            self.real.describe()
        }
    }

    /// Creating, changing and removing endpoints reads one row each, never the
    /// whole set: their cost does not grow with the number of endpoints.
    #[tokio::test]
    async fn changes_touch_one_endpoint_not_the_whole_set() {
        let dir = tempfile::tempdir().unwrap();
        let loads = Arc::new(AtomicUsize::new(0));
        let store = CountingStore {
            real: store::SqliteStore::open(dir.path()).unwrap(),
            loads: loads.clone(),
        };
        let eps = Endpoints::open(
            Box::new(store),
            &Routes::default(),
            guard::NetGuard::default(),
        )
        .await
        .unwrap();
        let at_open = loads.load(Ordering::Relaxed);
        let mut ids = Vec::new();
        for i in 0..50 {
            let fields = serde_json::json!({"url": format!("https://h{i}.example/x")});
            let (ep, _) = eps.create(fields.as_object().unwrap()).await.unwrap();
            ids.push(ep.id);
        }
        let patch = serde_json::json!({"description": "changed"});
        eps.update(&ids[7], patch.as_object().unwrap())
            .await
            .unwrap();
        eps.remove(&ids[3]).await.unwrap();
        assert_eq!(loads.load(Ordering::Relaxed), at_open);
        // The set in memory is the stored one, in id order.
        let listed: Vec<String> = eps.list().into_iter().map(|e| e.id).collect();
        let mut expected = ids.clone();
        expected.remove(3);
        assert_eq!(listed, expected);
        assert_eq!(
            eps.get(&ids[7]).unwrap().description.as_deref(),
            Some("changed")
        );
    }
}
