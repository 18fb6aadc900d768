//! The `notify "<name>"` blocks: where rollout outcomes are announced.

use std::collections::BTreeMap;

use super::fields::{read_secret_file, valid_name, word, word_or, Collector};
use super::raw::RawNotify;
use super::{NotifyConfig, NotifyFormat, Purpose};
use crate::store::records::Event;

/// The events a notice can announce: a rollout's terminal outcomes.
const NOTIFY_EVENTS: [Event; 3] = [Event::Deployed, Event::RolledBack, Event::Failed];

/// Every `notify` block, in name order.
pub(super) fn blocks(
    c: &mut Collector,
    raw: BTreeMap<String, RawNotify>,
    purpose: Purpose,
) -> Vec<NotifyConfig> {
    raw.into_iter()
        .map(|(name, n)| block(c, name, n, purpose))
        .collect()
}

fn block(c: &mut Collector, name: String, n: RawNotify, purpose: Purpose) -> NotifyConfig {
    let shown = if valid_name(&name) {
        name.clone()
    } else {
        c.add(
            None,
            &format!("notify {name:?}"),
            "notify names use only a-z, 0-9, '-' and '_'",
        );
        format!("{name:?}")
    };
    let field = |f: &str| format!("notify.{shown}.{f}");
    let format = word_or(
        c,
        None,
        &field("format"),
        n.format.as_deref(),
        (&NotifyFormat::ALL, NotifyFormat::Slack),
        "",
    );
    let url = match n.url_file {
        None => {
            c.add(None, &field("url_file"), "is required");
            None
        }
        Some(_) if purpose == Purpose::Client => None,
        Some(p) => read_secret_file(&p)
            .map_err(|e| c.add(None, &field("url_file"), e))
            .ok(),
    };
    let events = match n.events {
        None => NOTIFY_EVENTS.to_vec(),
        Some(list) => list
            .iter()
            .filter_map(|e| {
                word(&NOTIFY_EVENTS, e)
                    .map_err(|e| c.add(None, &field("events"), e))
                    .ok()
            })
            .collect(),
    };
    NotifyConfig {
        name,
        url,
        format,
        events,
    }
}
