//! A server that says a list changed (`notifications/tools/list_changed`, prompts,
//! resources) is listed again by the gateway itself, on its own connection, and the pins
//! review what it lists at once: a tool changed between two calls is held before the
//! second, whether or not the agent lists again. Calls to that server wait for the listing
//! (`pins::relist`); one that fails leaves the kind unknown and its calls refused until a
//! listing gets through.

use std::time::Instant;

use serde_json::{json, Value};
use tracing::Instrument;

use super::observe::Observer;
use super::record::Direction;
use super::sse::{SseItem, SseParser};
use super::to_server::{body_of, Back, ToServerError};
use crate::pins::Kind;

/// The ids of the gateway's own requests start so.
pub const OWN_ID_PREFIX: &str = "mcp-gateway-relist-";

/// An id for one of the gateway's own requests: unguessable, so neither another server nor
/// an agent can answer it in the server's place.
fn own_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without randomness the id is still unique; the answer is still keyed by server.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes.copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    format!("{OWN_ID_PREFIX}{}", hex::encode(bytes))
}

/// A parsed response as a JSON value (for the gateway's own exchanges).
pub fn as_value(m: &super::jsonrpc::Message<'_>) -> Value {
    let mut v = json!({"jsonrpc": "2.0", "id": m.id.as_ref().map(|i| i.to_string())});
    match m.result {
        Some(r) => v["result"] = serde_json::from_str(r.get()).unwrap_or(Value::Null),
        None => {
            v["error"] = json!({
                "code": m.error_code,
                "message": m.error_message.as_deref().unwrap_or(""),
            })
        }
    }
    v
}

/// How long the gateway's whole listing may take (calls wait `pins::relist::WAIT`, longer).
const LIST_WITHIN: std::time::Duration = std::time::Duration::from_secs(8);

/// The largest answer to one of the gateway's listing requests it reads.
const MAX_LISTING_BYTES: usize = 16 << 20;

/// Pages of one listing the gateway follows before it gives up.
const MAX_PAGES: usize = 64;

/// The listing a change notification calls for (the pinned kinds only).
pub fn listing_for(notification: &str) -> Option<&'static str> {
    match notification {
        "notifications/tools/list_changed" => Some("tools/list"),
        "notifications/prompts/list_changed" => Some("prompts/list"),
        "notifications/resources/list_changed" => Some("resources/templates/list"),
        _ => None,
    }
}

/// Starts the gateway's own listing after `notification`, when it calls for one.
pub fn on_notification(obs: &Observer, notification: &str) {
    let Some(listing) = listing_for(notification) else {
        return;
    };
    let (Some(view), Some((kind, name_field))) = (&obs.view, Kind::of_listing(listing)) else {
        return;
    };
    let Some(back) = obs.back.clone() else {
        tracing::debug!(notification, "no way back to the server: not re-listed");
        return;
    };
    // In flight from now: the agent cannot have read what follows the notification yet.
    let guard = view.pins.relisting(&obs.server);
    if !view.pins.relists.start(&obs.server, kind) {
        // The listing under way lists again when done, and calls wait for that too.
        drop(guard);
        return;
    }
    let pins = view.pins.clone();
    let server = obs.server.clone();
    let audit = obs.audit.clone();
    let version = obs.protocol_version.clone();
    let record = obs.own(Direction::ClientToServer, listing);
    let max = MAX_LISTING_BYTES;
    let notification = notification.to_string();
    tokio::spawn(
        async move {
            let _in_flight = guard;
            loop {
                relist_once(
                    &back,
                    &pins,
                    &server,
                    kind,
                    name_field,
                    listing,
                    version.as_deref(),
                    max,
                    &notification,
                    record.clone(),
                    &audit,
                )
                .await;
                if !pins.relists.again(&server, kind) {
                    break;
                }
            }
        }
        .in_current_span(),
    );
}

/// One listing, reviewed and recorded.
#[allow(clippy::too_many_arguments)]
async fn relist_once(
    back: &Back,
    pins: &std::sync::Arc<crate::pins::Pins>,
    server: &str,
    kind: Kind,
    name_field: &str,
    listing: &str,
    version: Option<&str>,
    max: usize,
    notification: &str,
    mut record: super::record::ExchangeRecord,
    audit: &crate::audit::AuditSink,
) {
    let started = Instant::now();
    // The user whose session the listing is made on (and whose calls a failure blocks).
    let uid = record.about.principal.uid;
    // One deadline for the whole listing, every page and body included: a server that
    // keeps its answer open leaves the kind unknown, not the calls waiting.
    let listed = tokio::time::timeout(
        LIST_WITHIN,
        list(back, &pins.relists, server, listing, version, max),
    )
    .await
    .unwrap_or_else(|_| Err(ToServerError::Timeout.into()));
    match listed {
        Ok(items) => {
            let review = pins.review(server, kind, name_field, &items);
            for e in review.events.iter().filter(|e| e.event == "held") {
                tracing::warn!(server = %server, kind = e.kind.label(), name = %e.name,
                            change = e.change.as_deref(), "definition held for review after the server said it changed");
            }
            if !review.events.is_empty() {
                record.pins = Some(review.events);
            }
            record.detail = Some(format!(
                "listed by the gateway after the server sent {notification} ({} items)",
                items.len()
            ));
        }
        Err(e) => {
            tracing::warn!(server = %server, error = %e, "re-listing after a change notification failed");
            pins.relists.failed(server, kind, uid, e.to_string());
            record.outcome = "upstream_error";
            record.detail = Some(format!(
                "the gateway could not list after the server sent {notification}: {e}; \
                         calls of this kind are refused until a listing gets through"
            ));
        }
    }
    record.latency_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    audit.record_now(&record);
}

#[derive(Debug, thiserror::Error)]
pub enum RelistError {
    #[error(transparent)]
    ToServer(#[from] ToServerError),
    #[error("the server answered the listing with error {code}: {message}")]
    Refused { code: i64, message: String },
    #[error("the server's listing is not one the gateway can read: {0}")]
    Unreadable(String),
    #[error("the listing has more than {MAX_PAGES} pages")]
    TooManyPages,
}

/// Every item of `method`'s listing, all pages.
async fn list(
    back: &Back,
    relists: &crate::pins::relist::Relists,
    server: &str,
    method: &str,
    version: Option<&str>,
    max: usize,
) -> Result<Vec<Value>, RelistError> {
    let (field, _, _) = crate::policy::filter::listing(method).expect("a listing method");
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    // What all pages together may take of memory.
    let mut left = max;
    for _ in 0..MAX_PAGES {
        let id = own_id();
        let mut params = json!({});
        if let Some(c) = &cursor {
            params["cursor"] = json!(c);
        }
        // The stateless revision carries its version in every request, and its method
        // in a header.
        let modern = version == Some("2026-07-28");
        if modern {
            params["_meta"] = json!({
                super::jsonrpc::META_PROTOCOL_VERSION: "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            });
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let extra: &[(&str, &str)] = if modern {
            &[("mcp-method", method)]
        } else {
            &[]
        };
        // Where the answer comes on a stream the gateway reads for the agent (a legacy
        // session's, the server's stdout), it is taken there.
        let elsewhere = relists.expect(server, &id);
        let answer = ask(back, &body, extra, &id, left, elsewhere).await;
        relists.forget(server, &id);
        let (answer, read) = answer?;
        left = left.saturating_sub(read);
        if answer["id"] != json!(id) {
            return Err(ToServerError::NoAnswer.into());
        }
        if let Some(err) = answer.get("error") {
            return Err(RelistError::Refused {
                code: err["code"].as_i64().unwrap_or(0),
                message: err["message"].as_str().unwrap_or("").to_string(),
            });
        }
        let result = &answer["result"];
        let Some(page) = result[field].as_array() else {
            return Err(RelistError::Unreadable(format!(
                "no {field} array in the result"
            )));
        };
        items.extend(page.iter().cloned());
        match result["nextCursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
            _ => return Ok(items),
        }
    }
    Err(RelistError::TooManyPages)
}

/// Sends one request of the gateway's own; its answer, from the HTTP response or from the
/// stream the gateway reads for the agent.
async fn ask(
    back: &Back,
    body: &Value,
    extra: &[(&str, &str)],
    id: &str,
    max: usize,
    elsewhere: tokio::sync::oneshot::Receiver<Value>,
) -> Result<(Value, usize), RelistError> {
    let bytes = serde_json::to_vec(body).expect("JSON");
    match back {
        Back::Http(http) => {
            let resp = http.post_with(bytes, extra).await?;
            let sse = super::media::of(resp.headers()) == super::media::Media::Sse;
            let accepted = resp.status() == http::StatusCode::ACCEPTED;
            let body = body_of(resp, max).await?;
            // 202: a legacy endpoint's acknowledgement (its answer comes on the stream).
            if !accepted {
                let answer = if sse {
                    answer_in_events(&body, id, max)?
                } else {
                    serde_json::from_slice::<Value>(&body)
                        .map_err(|e| RelistError::Unreadable(e.to_string()))?
                };
                return Ok((answer, body.len()));
            }
        }
        Back::Stdio(send) => {
            if !send(bytes) {
                return Err(ToServerError::StdinClosed.into());
            }
        }
    }
    let answer = tokio::time::timeout(super::to_server::WITHIN, elsewhere)
        .await
        .map_err(|_| ToServerError::Timeout)?
        .map_err(|_| ToServerError::NoAnswer)?;
    // It came on a stream whose size limits already hold.
    Ok((answer, 0))
}

/// The message answering `id` in an event stream.
fn answer_in_events(bytes: &[u8], id: &str, max: usize) -> Result<Value, RelistError> {
    let mut parser = SseParser::new(max);
    let mut items = parser
        .feed(bytes)
        .map_err(|e| RelistError::Unreadable(e.to_string()))?;
    items.extend(parser.finish());
    for item in items {
        let SseItem::Event(ev) = item else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        if v["id"] == json!(id) && v.get("method").is_none() {
            return Ok(v);
        }
    }
    Err(ToServerError::NoAnswer.into())
}
