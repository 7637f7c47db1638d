//! The subscription table: who receives which events.

use super::shared::{EventBus, Inner, read, write};
use super::table::{SubList, Subscription, SubscriptionId, WILDCARD};
use crate::event::Event;
use crate::handler::{Filter, Handler};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl EventBus {
    /// Registers `handler` for `event_type` (`"*"` for every type).
    pub fn subscribe(&self, event_type: &str, handler: impl Handler) -> SubscriptionId {
        self.add(event_type, None, Arc::new(handler))
    }

    /// Registers `handler` for the events of `event_type` that `filter` accepts;
    /// the others are never copied to it.
    pub fn subscribe_filtered(
        &self,
        event_type: &str,
        filter: impl Fn(&Event) -> bool + Send + Sync + 'static,
        handler: impl Handler,
    ) -> SubscriptionId {
        self.add(event_type, Some(Arc::new(filter)), Arc::new(handler))
    }

    /// Registers a shared handler for the events of `event_type` that `filter` accepts.
    pub fn subscribe_arc_filtered(
        &self,
        event_type: &str,
        filter: impl Fn(&Event) -> bool + Send + Sync + 'static,
        handler: Arc<dyn Handler>,
    ) -> SubscriptionId {
        self.add(event_type, Some(Arc::new(filter)), handler)
    }

    /// Registers a shared handler (one value subscribed to several types).
    pub fn subscribe_arc(&self, event_type: &str, handler: Arc<dyn Handler>) -> SubscriptionId {
        self.add(event_type, None, handler)
    }

    pub(super) fn add(
        &self,
        event_type: &str,
        filter: Option<Filter>,
        handler: Arc<dyn Handler>,
    ) -> SubscriptionId {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Subscription {
            id,
            filter,
            handler,
        });
        let mut guard = write(&self.inner.table);
        let table = Arc::make_mut(&mut guard);
        if event_type == WILDCARD {
            table.wildcard.push(sub);
        } else {
            table
                .own
                .entry(event_type.to_string())
                .or_default()
                .push(sub);
        }
        table.rebuild();
        id
    }

    /// Removes the subscription `id` of `event_type`; `false` if there was none.
    /// Events already dispatched to it still finish.
    pub fn unsubscribe(&self, event_type: &str, id: SubscriptionId) -> bool {
        let mut guard = write(&self.inner.table);
        let table = Arc::make_mut(&mut guard);
        let list = if event_type == WILDCARD {
            Some(&mut table.wildcard)
        } else {
            table.own.get_mut(event_type)
        };
        let Some(list) = list else { return false };
        let before = list.len();
        list.retain(|s| s.id != id);
        let removed = list.len() != before;
        if list.is_empty() && event_type != WILDCARD {
            table.own.remove(event_type);
        }
        table.rebuild();
        removed
    }

    /// Handler counts by event type (`"*"` for wildcard subscriptions).
    pub fn get_subscribers(&self) -> BTreeMap<String, usize> {
        let table = read(&self.inner.table).clone();
        let mut out: BTreeMap<String, usize> = table
            .own
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        if !table.wildcard.is_empty() {
            out.insert(WILDCARD.to_string(), table.wildcard.len());
        }
        out
    }
}

/// The subscriptions that take `e`: its type's list, narrowed by filters
/// (a new list is built only when a filter says no).
pub(super) fn matching(inner: &Inner, e: &Event) -> SubList {
    let list = {
        let table = read(&inner.table);
        table
            .lists
            .get(&e.event_type)
            .unwrap_or(&table.wildcard_list)
            .clone()
    };
    if list.iter().all(|s| s.accepts(e)) {
        list
    } else {
        list.iter().filter(|s| s.accepts(e)).cloned().collect()
    }
}
