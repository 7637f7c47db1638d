//! The JetStream KV store of managed endpoints (bucket `PM_ENDPOINTS`), used with
//! `PM_NATS_URL`: every node reads the same endpoints, and a watch on the bucket
//! tells each node of a change as soon as it is made.

use super::EndpointError;
use super::store::{EndpointStore, StoredEndpoint};
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use futures_util::StreamExt as _;
use std::time::Duration;

/// The bucket's name.
pub const BUCKET: &str = "PM_ENDPOINTS";

/// Managed endpoints in the JetStream KV bucket `PM_ENDPOINTS`: one key per endpoint
/// id, its value the stored endpoint as JSON.
pub struct KvStore {
    kv: kv::Store,
    url: String,
    /// The watch of the bucket, opened at the first `changed` and kept; `None`
    /// while it has to be opened (again).
    watch: tokio::sync::Mutex<Option<kv::Watch>>,
}

fn err(context: &str, e: impl std::error::Error + Send + Sync + 'static) -> EndpointError {
    EndpointError::store(context.to_string(), e)
}

impl KvStore {
    /// Connects to NATS at `url` and opens (creating) the bucket.
    pub async fn connect(url: &str) -> Result<Self, EndpointError> {
        let client = crate::transport::nats::connect_client(url)
            .await
            .map_err(|e| err(&format!("cannot connect to NATS at {url}"), e))?;
        let js = jetstream::new(client);
        // The bucket's stream, made as a KV bucket's stream is made (one value per
        // key, rollups, direct gets), with the plain stream API: it works with older
        // servers whose answer to a KV create the client cannot parse.
        js.get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{BUCKET}"),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|e| err(&format!("JetStream KV bucket {BUCKET}"), e))?;
        let kv = js
            .get_key_value(BUCKET)
            .await
            .map_err(|e| err(&format!("JetStream KV bucket {BUCKET}"), e))?;
        Ok(KvStore {
            kv,
            url: url.to_string(),
            watch: tokio::sync::Mutex::new(None),
        })
    }
}

#[async_trait]
impl EndpointStore for KvStore {
    async fn load(&self) -> Result<Vec<StoredEndpoint>, EndpointError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| err(&format!("list the keys of {BUCKET}"), e))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| err(&format!("list the keys of {BUCKET}"), e))?;
            let Some(v) = self
                .kv
                .get(&k)
                .await
                .map_err(|e| err(&format!("read {k} of {BUCKET}"), e))?
            else {
                continue;
            };
            match serde_json::from_slice::<StoredEndpoint>(&v) {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::error!(endpoint = %k, error = %e, "unreadable endpoint in {BUCKET} skipped")
                }
            }
        }
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Option<StoredEndpoint>, EndpointError> {
        let Some(v) = self
            .kv
            .get(id)
            .await
            .map_err(|e| err(&format!("read {id} of {BUCKET}"), e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| EndpointError::store(format!("endpoint {id} in {BUCKET}"), e))
    }

    async fn put(&self, e: &StoredEndpoint) -> Result<(), EndpointError> {
        let doc =
            serde_json::to_vec(e).map_err(|err| EndpointError::store("encode an endpoint", err))?;
        self.kv
            .put(&e.endpoint.id, doc.into())
            .await
            .map_err(|x| err(&format!("write {} to {BUCKET}", e.endpoint.id), x))?;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<bool, EndpointError> {
        let existed = self
            .kv
            .get(id)
            .await
            .map_err(|e| err(&format!("read {id} of {BUCKET}"), e))?
            .is_some();
        self.kv
            .purge(id)
            .await
            .map_err(|e| err(&format!("remove {id} from {BUCKET}"), e))?;
        Ok(existed)
    }

    async fn changed(&self, max: Duration) -> bool {
        let mut w = self.watch.lock().await;
        if w.is_none() {
            match self.kv.watch_all().await {
                Ok(watch) => {
                    // Changes made before the watch began are only seen by reading again.
                    *w = Some(watch);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch {BUCKET}; looking again shortly");
                    drop(w);
                    tokio::time::sleep(max).await;
                    return true;
                }
            }
        }
        let Some(watch) = w.as_mut() else {
            return false;
        };
        match tokio::time::timeout(max, watch.next()).await {
            Ok(Some(_)) => true,
            Ok(None) => {
                *w = None;
                true
            }
            Err(_) => false,
        }
    }

    fn describe(&self) -> String {
        format!(
            "JetStream KV bucket {BUCKET} at {}",
            crate::webhook::delivery::redact_url(&self.url)
        )
    }
}
