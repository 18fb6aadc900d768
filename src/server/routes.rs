//! The hook routes: one request, from its path's secret to its answer.
//!
//! `POST /hooks/<secret>` delivers a push (address, body, signature,
//! payload, ingest, in the contract's order), `GET
//! /hooks/<secret>/rollouts/<seq>` tells where a change stands; every
//! request is counted once and logged once ([`handle`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::body::{drain, read_body};
use super::guard::{self, AddrKey};
use super::reply::{hold, json_response, reject, too_large, Rejection, Reply, Report};
use super::{digest, waiting, AppState};
use crate::config::ServiceConfig;
use crate::ingest::{Change, Ingested};
use crate::metrics::WebhookLabels;
use crate::webhook::{self, Parsed, WebhookError};

/// Handle one request: count it once; log an accepted one at once and a
/// rejected one in its address's summary.
pub async fn handle(req: Request<Incoming>, peer: SocketAddr, state: &AppState) -> Response<Reply> {
    // A health check of the HTTPS listener itself (Nomad, load balancers):
    // proves TLS and the listener are up. Not a webhook: neither counted,
    // logged nor charged to the failed-attempt limit.
    if req.uri().path() == "/healthz" && matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut resp = Response::new(Reply::new(Bytes::from_static(b"ok\n")));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        return resp;
    }
    let started = Instant::now();
    let (resp, report) = route(req, peer, state).await;
    let elapsed = started.elapsed();
    let svc = report.service.map(|i| &state.config.services[i]);
    let service = svc.map_or("", |s| s.name.as_str());
    let source = svc.map_or("", |s| s.source.as_str());
    state
        .metrics
        .webhooks
        .get_or_create(&WebhookLabels {
            service: service.to_string(),
            source: source.to_string(),
            outcome: report.outcome,
        })
        .inc();
    if svc.is_some() {
        state.metrics.ingest_seconds.observe(elapsed.as_secs_f64());
    }
    // A tag the registry does not know (or a registry that is down)
    // answers 502 as often as the holder of an unsigned URL asks.
    let summarised = resp.status().is_client_error() || report.outcome == "registry_error";
    if summarised {
        // SECURITY: a stranger chooses how many of these there are, so
        // they are summarised (at most one line per address per interval)
        // rather than logged one by one; the metric counts each.
        let client = report.client.unwrap_or_else(|| guard::canonical(peer.ip()));
        state.rejects.record(
            AddrKey::of(client),
            report.outcome,
            report.service,
            report.detail.as_deref(),
        );
        return resp;
    }
    // SECURITY: the path (which holds the secret) is never logged.
    tracing::info!(
        service,
        source,
        tag = report.tag.as_deref().unwrap_or(""),
        outcome = report.outcome,
        status = resp.status().as_u16(),
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        "webhook"
    );
    resp
}

/// Decide one webhook request: the contract's table in order (secret,
/// address, then the status path, or body, signature, payload, ingest),
/// each step's early answer in place.
async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: &AppState,
) -> (Response<Reply>, Report) {
    let mut report = Report {
        service: None,
        tag: None,
        outcome: "not_found",
        client: None,
        detail: None,
    };
    let (parts, mut body) = req.into_parts();
    let ip = guard::client_ip(
        peer,
        parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes),
        &state.config.trusted_proxies,
    );
    report.client = Some(ip);

    // SECURITY: the failed-attempt limit is consulted only for requests
    // that fail. A request whose secret matches is processed whatever its
    // address's count (its signature is still checked, and a bad one
    // counts as a failure), so nobody sharing a registry's address pool
    // (Docker Hub, GitHub and Quay deliver from shared pools) can get its
    // deliveries refused by failing on purpose. A limited address used to
    // get 429 for everything, so that a guesser could not tell a hit from
    // a miss. That "no oracle" rule bought nothing: secrets are 256-bit,
    // and for a limited address the only request whose answer differs
    // (processed instead of 429) is one carrying the correct secret,
    // which guessing cannot find; the 404/429 difference itself tells
    // nothing about any secret. The limit slows guessing and the noise it
    // makes; the secret's size is what protects it.
    let Some((idx, status_seq)) = target(state, &parts) else {
        let r = match state.guard.fail(ip) {
            Some(wait) => Rejection::RateLimited(wait),
            None => Rejection::NotFound,
        };
        drain(&mut body).await;
        return (hold(reject(&mut report, r), body), report);
    };
    report.service = Some(idx);
    let svc = &state.config.services[idx];
    if !svc.allow_cidrs.iter().any(|n| n.contains(&ip)) {
        drain(&mut body).await;
        return (
            hold(reject(&mut report, Rejection::Forbidden), body),
            report,
        );
    }

    if let Some(seq) = status_seq {
        drain(&mut body).await;
        report.outcome = "status";
        let resp = match rollout_status(state, svc, seq, parts.uri.query()).await {
            Ok(resp) => resp,
            Err(r) => reject(&mut report, r),
        };
        return (resp, report);
    }
    let hook = Hook {
        state,
        svc,
        ip,
        parts: &parts,
    };
    let resp = webhook(&hook, body, &mut report).await;
    (resp, report)
}

/// The service whose secret the path presents, and the seq when it is
/// the status path (`<secret>/rollouts/<seq>`); `None` when no secret
/// matches, or the method is not the one the path takes.
fn target<'a>(
    state: &AppState,
    parts: &'a http::request::Parts,
) -> Option<(usize, Option<&'a str>)> {
    // Hash something for every request, so an unknown path costs the same
    // as a wrong secret.
    let path = parts.uri.path();
    let rest = path.strip_prefix("/hooks/").unwrap_or(path);
    // The status path lives under the same secret: `<secret>/rollouts/<seq>`.
    let (presented, status_seq) = match rest.split_once("/rollouts/") {
        Some((secret, seq)) => (secret, Some(seq)),
        None => (rest, None),
    };
    let matched = guard::match_secret(&state.config.services, presented.as_bytes());
    let wanted = match status_seq {
        None => Method::POST,
        Some(_) => Method::GET,
    };
    match matched {
        Some(i) if parts.method == wanted && path.starts_with("/hooks/") => Some((i, status_seq)),
        _ => None,
    }
}

/// A webhook past its secret and address checks: what the steps from
/// its body to its answer share.
struct Hook<'a> {
    state: &'a AppState,
    svc: &'a ServiceConfig,
    /// The client address as the limits see it.
    ip: IpAddr,
    parts: &'a http::request::Parts,
}

/// `POST /hooks/<secret>`: its `?wait=`, its body (bounded), then the
/// delivery.
async fn webhook(hook: &Hook<'_>, mut body: Incoming, report: &mut Report) -> Response<Reply> {
    let Hook {
        state, svc, parts, ..
    } = *hook;
    // Checked before anything is written: bad input changes nothing.
    let cap = svc
        .rollout
        .as_ref()
        .map_or(Duration::ZERO, |r| r.total_timeout());
    let wait = match waiting::wait_param(parts.uri.query(), cap) {
        Ok(w) => w,
        Err(m) => {
            drain(&mut body).await;
            return hold(reject(report, Rejection::BadRequest(m)), body);
        }
    };

    let body = match read_body(&mut body, &parts.headers, state.limits.body_read).await {
        Ok(b) => b,
        Err(Rejection::TooLarge) => {
            let resp = reject(report, Rejection::TooLarge);
            return too_large(resp, body, parts);
        }
        Err(r) => return hold(reject(report, r), body),
    };
    deliver(hook, &body, wait, report).await
}

/// The authenticated webhook's payload: parse (signature included), hold
/// it to the service's repository, apply the best tag, answer.
async fn deliver(
    hook: &Hook<'_>,
    body: &Bytes,
    wait: Duration,
    report: &mut Report,
) -> Response<Reply> {
    let Hook {
        state, svc, parts, ..
    } = *hook;
    let pushes = match payload(hook, body, report) {
        Payload::Pushes(p) => p,
        Payload::Answered(resp) => return resp,
    };
    let push = match best_resolved(state, svc, pushes).await {
        Ok(p) => p,
        Err(e) => {
            report.tag = Some(e.tag.clone());
            return reject(report, Rejection::Digest(e));
        }
    };
    let change = Change::Push {
        push,
        source: svc.source,
    };
    match state.ingest.apply(svc, &change).await {
        Ok(ingested) => {
            report.tag = Some(ingested.tag.clone());
            report.outcome = if ingested.changed {
                "applied"
            } else {
                match ingested.reason.as_deref() {
                    Some("unchanged") => "unchanged",
                    Some("pinned") => "pinned",
                    _ => "ignored",
                }
            };
            accepted(state, svc, &ingested, parts.uri.path(), wait).await
        }
        Err(e) => {
            tracing::warn!(service = %svc.name, error = %e, "ingest failed; nothing written");
            // Named in the log line even when nothing could be written
            // (here, off the accepted path, so that path copies it once).
            report.tag = Some(change.tag().to_string());
            reject(report, Rejection::Ingest(e))
        }
    }
}

/// What a webhook's payload asks for.
enum Payload {
    /// Pushes of the service's repository, at least one.
    Pushes(Vec<webhook::ImagePush>),
    /// Nothing to apply: a ping, an ignored event, a bad signature or
    /// payload, answered here.
    Answered(Response<Reply>),
}

/// Parse the payload (signature included) and hold its pushes to the
/// service's repository.
fn payload(hook: &Hook<'_>, body: &Bytes, report: &mut Report) -> Payload {
    let Hook {
        state,
        svc,
        ip,
        parts,
    } = *hook;
    let parsed = webhook::parse(
        svc.source,
        &webhook::Request {
            headers: &parts.headers,
            body,
            signing_secret: svc.signing_secret.as_ref().map(|s| s.expose()),
        },
    );
    let pushes = match parsed {
        Ok(Parsed::Push(p)) => p,
        Ok(Parsed::Ping) => {
            report.outcome = "ping";
            return Payload::Answered(json_response(StatusCode::OK, &json!({"pong": true})));
        }
        Ok(Parsed::Ignored(reason)) => {
            report.outcome = "ignored";
            let body = json!({
                "service": svc.name, "key": svc.key, "tag": null, "previous": null,
                "changed": false, "reason": reason, "rollout": "none",
            });
            return Payload::Answered(json_response(StatusCode::OK, &body));
        }
        Err(e @ (WebhookError::SignatureMissing(_) | WebhookError::SignatureMismatch)) => {
            let r = match state.guard.fail(ip) {
                Some(wait) => Rejection::RateLimited(wait),
                None => Rejection::Signature(e),
            };
            return Payload::Answered(reject(report, r));
        }
        Err(WebhookError::Malformed(m)) => {
            return Payload::Answered(reject(report, Rejection::BadRequest(m)));
        }
    };
    if let Some(p) = pushes
        .iter()
        .find(|p| !p.repository.eq_ignore_ascii_case(&svc.repository))
    {
        let msg = format!(
            "repository {:?} does not match this service's repository {:?}",
            p.repository, svc.repository
        );
        return Payload::Answered(reject(report, Rejection::BadRequest(msg)));
    }
    if pushes.is_empty() {
        return Payload::Answered(reject(
            report,
            Rejection::BadRequest(format!("{}: no tag in payload", svc.source)),
        ));
    }
    Payload::Pushes(pushes)
}

/// The one tag of a push that the service's policy ranks highest, with
/// its digest asked of the registry when the payload has none and the
/// service sets `resolve_digest`.
///
/// SECURITY: a push may list thousands of tags (Quay, Harbor); applying
/// each would cost a Consul transaction apiece while the client waits, and
/// flood the history. One push is one decision and one transaction, and
/// at most one registry request: only for the tag that is applied, and
/// never for one the filters refuse (that push writes nothing anyway).
async fn best_resolved(
    state: &AppState,
    svc: &ServiceConfig,
    mut pushes: Vec<webhook::ImagePush>,
) -> Result<webhook::ImagePush, digest::DigestError> {
    let best = svc
        .policy
        .policy
        .best_candidate(pushes.iter().map(|p| p.tag.as_str()));
    // None passes the filters: the last one gets the filter's reason.
    let mut push = pushes.swap_remove(best.unwrap_or(pushes.len() - 1));
    if best.is_some() && push.digest.is_none() {
        push.digest = state
            .digests
            .resolve(svc, &push.tag, &state.metrics)
            .await?;
    }
    Ok(push)
}

/// The answer to an accepted webhook. Serialised straight from borrowed
/// fields, in the order `json!` used to give them (sorted), since this is
/// the one answer every delivery gets.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    changed: bool,
    key: &'a str,
    previous: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    rollout: &'static str,
    /// The queued rollout's seq and status path.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    service: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    tag: &'a str,
    /// With `?wait=`: where the rollout stood when the answer was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<&'a crate::change_status::SeqStatus>,
}

/// The answer to an accepted webhook. A queued rollout names its seq and
/// status path; with `?wait=`, the answer is held until the rollout's
/// outcome is final or the wait ends, and its status is the outcome's
/// (see [`waiting::status_code`]). The change is durable either way: a
/// failed wait still answers 202.
async fn accepted(
    state: &AppState,
    svc: &ServiceConfig,
    o: &Ingested,
    path: &str,
    wait: Duration,
) -> Response<Reply> {
    // SECURITY: the status path holds the secret, echoed only to the
    // caller that sent it (never logged).
    let status_path = o.rollout_seq.map(|seq| format!("{path}/rollouts/{seq}"));
    let waiting = !wait.is_zero() && svc.rollout.is_some();
    let keys = state.ingest.keys(svc);
    let consul = state.ingest.consul();
    // A re-sent webhook (a CI job run again) finds its tag unchanged: it
    // waits on the change that asked for that tag, so a rolled-back tag
    // still fails the pipeline.
    let seq = match o.rollout_seq {
        None if waiting && o.reason.as_deref() == Some("unchanged") => {
            crate::change_status::desired_seq(consul, &keys, &o.tag)
                .await
                .unwrap_or(None)
        }
        seq => seq,
    };
    let deploy = match seq {
        Some(seq) if waiting => match state.waits.seq_status(consul, &keys, seq, wait).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(service = %svc.name, error = %e, "waiting for the rollout's outcome failed; answering without it");
                None
            }
        },
        _ => None,
    };
    let body = Accepted {
        changed: o.changed,
        key: &svc.key,
        previous: o.previous.as_deref(),
        reason: o.reason.as_deref(),
        rollout: if o.rollout_queued() { "queued" } else { "none" },
        seq: o.rollout_seq,
        service: &svc.name,
        status: status_path.as_deref(),
        tag: &o.tag,
        deploy: deploy.as_ref(),
    };
    let status = match (&deploy, seq) {
        (Some(d), _) => waiting::status_code(d.state),
        (None, Some(_)) => StatusCode::ACCEPTED,
        // Waiting for a deploy this webhook did not ask for (older,
        // pinned, filtered): a CI step must not read it as success.
        (None, None) if waiting => StatusCode::CONFLICT,
        (None, None) => StatusCode::OK,
    };
    json_response(status, &body)
}

/// `GET /hooks/<secret>/rollouts/<seq>[?wait=…]`: where one change stands.
async fn rollout_status(
    state: &AppState,
    svc: &ServiceConfig,
    seq: &str,
    query: Option<&str>,
) -> Result<Response<Reply>, Rejection> {
    let Some(rc) = &svc.rollout else {
        return Err(Rejection::BadRequest(
            "this service has no rollout block: its webhook answers once the key is written".into(),
        ));
    };
    let seq: u64 = seq
        .parse()
        .map_err(|_| Rejection::BadRequest(format!("seq {seq:?} is not a number")))?;
    let wait = waiting::wait_param(query, rc.total_timeout()).map_err(Rejection::BadRequest)?;
    let keys = state.ingest.keys(svc);
    let status = state
        .waits
        .seq_status(state.ingest.consul(), &keys, seq, wait)
        .await
        .map_err(Rejection::ChangeStatus)?
        .ok_or(Rejection::UnknownRollout(seq))?;
    let body = waiting::StatusBody {
        service: &svc.name,
        status: &status,
    };
    Ok(json_response(waiting::status_code(status.state), &body))
}
