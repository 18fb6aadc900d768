//! Notifications: tell people what a rollout did, once its outcome is known.
//!
//! Sent only for terminal outcomes (deployed = healthy, not "submitted"),
//! in the background with bounded retries, so a slow or dead chat server
//! never holds a rollout up.
//!
//! SECURITY: incoming-webhook URLs are credentials. They come from files,
//! and neither the URL nor the receiver's answer body is ever logged.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::clients::http::HttpClient;
use crate::config::{NotifyConfig, NotifyFormat};
use crate::store::Event;

/// What a notification says.
#[derive(Debug, Clone)]
pub struct Notice {
    /// `Deployed`, `RolledBack` or `Failed`: the outcomes a target can ask
    /// for.
    pub event: Event,
    pub service: String,
    pub tag: String,
    pub previous: Option<String>,
    pub detail: Option<String>,
    pub at: String,
}

impl Notice {
    fn text(&self) -> String {
        let mut s = match self.event {
            Event::Deployed => format!(":white_check_mark: {} deployed {}", self.service, self.tag),
            Event::RolledBack => format!(
                ":leftwards_arrow_with_hook: {} rolled back to {}",
                self.service, self.tag
            ),
            _ => format!(":x: {} rollout of {} failed", self.service, self.tag),
        };
        if let Some(p) = &self.previous {
            s.push_str(&format!(" (previous: {p})"));
        }
        if let Some(d) = &self.detail {
            s.push_str(&format!("\n{d}"));
        }
        s
    }
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
enum Undelivered {
    #[error("notification URL is not a valid URL; not sent")]
    BadUrl,
    #[error("refused with HTTP {0}")]
    Refused(u16),
    #[error("{0}")]
    Unreachable(String),
}

/// Sends notices to every configured target that wants the event.
#[derive(Clone)]
pub struct Notifier {
    http: HttpClient,
    targets: Arc<Vec<NotifyConfig>>,
    tracker: TaskTracker,
    attempts: u32,
    backoff: Duration,
}

impl Notifier {
    pub fn new(http: HttpClient, targets: Vec<NotifyConfig>) -> Self {
        Notifier {
            http,
            targets: Arc::new(targets),
            tracker: TaskTracker::new(),
            attempts: 3,
            backoff: Duration::from_millis(500),
        }
    }

    /// Queue a notice; returns at once.
    pub fn send(&self, notice: Notice) {
        for target in self.targets.iter() {
            if !target.events.contains(&notice.event) {
                continue;
            }
            let Some(url) = target.url.clone() else {
                continue;
            };
            let body = match target.format {
                NotifyFormat::Slack => json!({ "text": notice.text() }),
                NotifyFormat::Json => json!({
                    "event": notice.event,
                    "service": notice.service,
                    "tag": notice.tag,
                    "previous": notice.previous,
                    "detail": notice.detail,
                    "at": notice.at,
                }),
            };
            let http = self.http.clone();
            let name = target.name.clone();
            let (attempts, backoff) = (self.attempts, self.backoff);
            let event = notice.event.as_str();
            self.tracker.spawn(async move {
                let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
                let once = || {
                    let (http, url, body) = (http.clone(), url.clone(), body.clone());
                    async move {
                        let req = http::Request::post(String::from_utf8_lossy(url.expose()).trim())
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(Full::new(body))
                            .map_err(|_| Undelivered::BadUrl)?;
                        match http.send(req, Duration::from_secs(10)).await {
                            Ok(r) if r.status.is_success() => Ok(()),
                            Ok(r) => Err(Undelivered::Refused(r.status.as_u16())),
                            Err(e) => Err(Undelivered::Unreachable(e.to_string())),
                        }
                    }
                };
                let retry = ExponentialBuilder::default()
                    .with_min_delay(backoff)
                    .with_max_times(attempts.saturating_sub(1) as usize)
                    .with_jitter();
                // SECURITY: only the status or transport error is logged,
                // never the URL (a credential) or the receiver's answer.
                let sent = once
                    .retry(retry)
                    .when(|e| !matches!(e, Undelivered::BadUrl))
                    .notify(|e, wait| tracing::warn!(notify = %name, event, error = %e, ?wait, "notification not delivered; retrying"))
                    .await;
                match sent {
                    Ok(()) => tracing::debug!(notify = %name, event, "notification sent"),
                    Err(e) => tracing::warn!(notify = %name, event, error = %e, "notification given up"),
                }
            });
        }
    }

    /// Wait (at most `limit`) for queued notices on shutdown.
    pub async fn drain(&self, limit: Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
    }
}
