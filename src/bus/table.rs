//! The subscription table: who receives which events (types, `*`, filters).

use crate::event::Event;
use crate::handler::{Filter, Handler};
use std::collections::HashMap;
use std::sync::Arc;

/// Identifies one subscription, for [`EventBus::unsubscribe`](crate::EventBus::unsubscribe).
pub type SubscriptionId = u64;

/// The event type that subscribes to every type.
pub const WILDCARD: &str = "*";

pub(super) struct Subscription {
    pub(super) id: SubscriptionId,
    pub(super) filter: Option<Filter>,
    pub(super) handler: Arc<dyn Handler>,
}

impl Subscription {
    pub(super) fn accepts(&self, e: &Event) -> bool {
        self.filter.as_ref().is_none_or(|f| f(e))
    }
}

/// The subscription table; replaced whole on every change (copy on write) so
/// the dispatcher reads it without holding a lock while it works. Each type's
/// list already includes the wildcard subscriptions, so a dispatch is one
/// lookup and one reference-count increment.
#[derive(Default, Clone)]
pub(super) struct Table {
    /// Subscriptions made per type (without the wildcard ones).
    pub(super) own: HashMap<String, Vec<Arc<Subscription>>>,
    /// `"*"` subscriptions.
    pub(super) wildcard: Vec<Arc<Subscription>>,
    /// What dispatch reads: per type, its own subscriptions then the wildcard ones.
    pub(super) lists: HashMap<String, SubList>,
    /// What dispatch reads for a type with no subscription of its own.
    pub(super) wildcard_list: SubList,
}

pub(super) type SubList = Arc<[Arc<Subscription>]>;

impl Table {
    pub(super) fn rebuild(&mut self) {
        self.wildcard_list = self.wildcard.iter().cloned().collect();
        self.lists = self
            .own
            .iter()
            .map(|(t, own)| {
                (
                    t.clone(),
                    own.iter().chain(&self.wildcard).cloned().collect(),
                )
            })
            .collect();
    }
}
