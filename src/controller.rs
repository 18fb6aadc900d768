//! The controller: one leader among tagbridge replicas drives rollouts.
//!
//! Leadership is a Consul session lock on `<state_prefix>/leader`. The
//! session has a TTL renewed at half of it, each renew bounded by the TTL
//! left; a 404 on renew means Consul already gave the lock away, so
//! driving stops at once (and every record write is fenced by the lock
//! anyway). The lock key itself is watched too: deleted by hand or taken
//! by another session, our session stays valid but the lock is gone, so the term ends
//! and this replica campaigns again (a driver whose fenced write fails
//! the session check ends the term the same way). The leader watches the
//! desired records with blocking queries and runs at most one driver per
//! service; a driver reads the newest desired record each time it
//! finishes, so tags that arrive mid-rollout coalesce into the newest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clients::consul::{BlockingIndex, Consul, ConsulError};
use crate::rollout::{Context, Driver};

/// Session TTL: Consul's minimum, so a crashed leader is replaced fast
/// (Consul may take up to twice the TTL to expire a session).
pub const SESSION_TTL: Duration = Duration::from_secs(10);

/// Run the controller until `shutdown`: campaign for the lock, lead while
/// holding it, campaign again when it is lost.
///
/// `base` is the rollout context without fence or cancel token; this
/// function fills both in for each term of leadership.
pub async fn run(base: Context, shutdown: CancellationToken) {
    let consul = base.consul.clone();
    let lock_key = format!("{}/leader", base.config.state_prefix);
    let holder = format!(
        "{{\"host\":{:?},\"pid\":{}}}",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
        std::process::id()
    );
    // Consul outages while campaigning are retried with backoff, never
    // given up; a shutdown cuts the wait short, and `campaign` then
    // returns `Ok(None)` at once.
    let policy = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    while !shutdown.is_cancelled() {
        let stop = shutdown.clone();
        let won = (|| campaign(&consul, &lock_key, holder.as_bytes(), &shutdown))
            .retry(policy)
            .sleep(move |wait| {
                let stop = stop.clone();
                async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            })
            .notify(|e, wait| {
                tracing::warn!(error = %e, ?wait, "controller cannot reach Consul; retrying");
            })
            .await;
        if let Ok(Some(session)) = won {
            term(&base, &lock_key, session, &shutdown).await;
        }
    }
}

/// One term of leadership: renew the session, watch the lock key, lead;
/// then hand the lock back.
async fn term(base: &Context, lock_key: &str, session: String, shutdown: &CancellationToken) {
    let consul = &base.consul;
    tracing::info!(lock = %lock_key, "leadership acquired");
    let term = shutdown.child_token();
    let renew = tokio::spawn(renew(consul.clone(), session.clone(), term.clone()));
    let watch = tokio::spawn(watch_lock(
        consul.clone(),
        lock_key.to_string(),
        session.clone(),
        term.clone(),
    ));
    let ctx = Context {
        fence: Some((lock_key.to_string(), session.clone())),
        cancel: term.clone(),
        ..base.clone()
    };
    lead(ctx).await;
    term.cancel();
    let _ = renew.await;
    let _ = watch.await;
    // Best effort: a clean stop hands the lock over at once; otherwise the
    // TTL frees it.
    let _ = consul.lock_release(lock_key, &session).await;
    let _ = consul.session_destroy(&session).await;
    if !shutdown.is_cancelled() {
        tracing::warn!("leadership lost; campaigning again");
    }
}

/// Try to take the lock; while someone else holds it, wait for it to be
/// released (blocking query) and try again. `Ok(None)` on shutdown.
async fn campaign(
    consul: &Consul,
    key: &str,
    holder: &[u8],
    shutdown: &CancellationToken,
) -> Result<Option<String>, ConsulError> {
    let session = consul
        .session_create("tagbridge-controller", SESSION_TTL)
        .await?;
    let mut index = BlockingIndex::default();
    let mut renewed = tokio::time::Instant::now();
    let mut free = short_pauses();
    loop {
        if shutdown.is_cancelled() {
            let _ = consul.session_destroy(&session).await;
            return Ok(None);
        }
        match consul.lock_acquire(key, &session, holder).await {
            Ok(true) => return Ok(Some(session)),
            Ok(false) => {}
            Err(e) => {
                let _ = consul.session_destroy(&session).await;
                return Err(e);
            }
        }
        // Keep our own session alive while we wait.
        if renewed.elapsed() >= SESSION_TTL / 2 {
            if let Err(e) = consul.session_renew(&session).await {
                let _ = consul.session_destroy(&session).await;
                return Err(e);
            }
            renewed = tokio::time::Instant::now();
        }
        let read = tokio::select! {
            () = shutdown.cancelled() => continue,
            r = consul.kv_get_blocking(key, index.current(), SESSION_TTL / 2) => r,
        };
        match read {
            Ok(r) => {
                index.observe(r.index);
                if r.value.as_ref().is_some_and(|kv| kv.session.is_some()) {
                    free = short_pauses();
                    continue;
                }
                // Free: Consul's lock-delay may still refuse us briefly.
                tokio::time::sleep(free.next().unwrap_or(Duration::from_secs(2))).await;
            }
            Err(e) => {
                let _ = consul.session_destroy(&session).await;
                return Err(e);
            }
        }
    }
}

/// Renew the session now and then every TTL/2 until `term` ends; lose
/// leadership (cancel `term`) on a 404 or when renewals fail for longer
/// than the TTL. Each renew may take only the TTL left, so a hanging
/// Consul cannot keep a leader that Consul already expired.
async fn renew(consul: Consul, session: String, term: CancellationToken) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        let left = SESSION_TTL.saturating_sub(last_ok.elapsed());
        let result = tokio::select! {
            () = term.cancelled() => return,
            r = tokio::time::timeout(left, consul.session_renew(&session)) => r,
        };
        match result {
            Ok(Ok(())) => last_ok = tokio::time::Instant::now(),
            Ok(Err(ConsulError::SessionNotFound(_))) => {
                tracing::error!("controller session expired: the lock is lost; stopping every rollout driver now");
                term.cancel();
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "session renew failed"),
            Err(_) => tracing::warn!("session renew unanswered within the TTL left"),
        }
        if last_ok.elapsed() >= SESSION_TTL {
            tracing::error!("session not renewed within its TTL; assuming the lock is lost");
            term.cancel();
            return;
        }
        tokio::select! {
            () = term.cancelled() => return,
            () = tokio::time::sleep(SESSION_TTL / 2) => {}
        }
    }
}

/// Short, growing, jittered pauses that never give up (the loop ends with
/// its term, not on errors): between tries at a free lock that Consul's
/// lock-delay (15 s by default after a session is invalidated) still
/// refuses, and after a failed blocking query.
fn short_pauses() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder as _;
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Watch the lock key (blocking queries) until `term` ends; cancel the
/// term as soon as the key is deleted or names another session.
async fn watch_lock(consul: Consul, key: String, session: String, term: CancellationToken) {
    let mut index = BlockingIndex::default();
    let mut errors = short_pauses();
    loop {
        let read = tokio::select! {
            () = term.cancelled() => return,
            r = consul.kv_get_blocking(&key, index.current(), SESSION_TTL) => r,
        };
        match read {
            Ok(r) => {
                index.observe(r.index);
                let holder = r.value.and_then(|kv| kv.session);
                if holder.as_deref() != Some(session.as_str()) {
                    tracing::error!(lock = %key, "the lock key was deleted or taken over; ending this term and campaigning again");
                    term.cancel();
                    return;
                }
            }
            // Outages are the renew loop's to judge.
            Err(e) => {
                tracing::debug!(error = %e, "watching the lock key failed");
                let wait = errors.next().unwrap_or(Duration::from_secs(2));
                tokio::select! {
                    () = term.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Lead until `ctx.cancel`: watch desired records, keep one driver per
/// service with a rollout block, and poll registries (`poll_interval`).
async fn lead(ctx: Context) {
    let prefix = format!("{}/desired/", ctx.config.state_prefix);
    let ctx = Arc::new(ctx);
    // Registry polls (poll_interval) run while this term lasts.
    let ingest =
        crate::ingest::Ingest::new(ctx.consul.clone(), ctx.config.clone(), ctx.metrics.clone());
    let polls = tokio::spawn(crate::poller::run(
        ctx.config.clone(),
        Arc::new(ingest),
        ctx.cancel.clone(),
    ));
    let mut drivers: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut index = BlockingIndex::default();
    let mut errors = short_pauses();
    loop {
        for svc in ctx.config.services.iter().filter(|s| s.rollout.is_some()) {
            if drivers.get(&svc.name).is_some_and(|h| !h.is_finished()) {
                continue;
            }
            let ctx = ctx.clone();
            let name = svc.name.clone();
            drivers.insert(
                name.clone(),
                tokio::spawn(async move {
                    let Some(svc) = ctx.config.service(&name) else { return };
                    let Some(driver) = Driver::new(&ctx, svc) else { return };
                    // Logged once, here, where the driver was spawned.
                    if let Err(e) = driver.drive().await {
                        if ctx.cancel.is_cancelled() {
                            tracing::info!(service = %name, "rollout driver stopped: {e}");
                        } else {
                            tracing::error!(service = %name, error = %e, "rollout driver failed; retrying on the next change or within 30 s");
                        }
                    }
                }),
            );
        }
        let read = tokio::select! {
            () = ctx.cancel.cancelled() => break,
            r = ctx.consul.kv_list(&prefix, Some((index.current(), Duration::from_secs(30)))) => r,
        };
        match read {
            Ok(r) => {
                index.observe(r.index);
                errors = short_pauses();
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching desired records failed");
                let wait = errors.next().unwrap_or(Duration::from_secs(2));
                tokio::select! {
                    () = ctx.cancel.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    // Drivers stop at their next cancellation check; whatever is still
    // running after one shared deadline is aborted (records say where the
    // next leader resumes).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for mut h in drivers.into_values().chain([polls]) {
        if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
            h.abort();
        }
    }
}
