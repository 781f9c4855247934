//! AWS AppSync Events' part: the Event API that carries a job's text to the web UI as the
//! worker writes it. Deployed, AWS runs the API; locally the gateway mounts this emulator on
//! its own port, built to the service's documented protocol:
//!
//! - `POST /event` ([`PUBLISH_PATH`]): a publish, as "Publish events via HTTP"
//!   (docs.aws.amazon.com/appsync/latest/eventapi/publish-http) describes it. The `jobs`
//!   namespace publishes with `AWS_IAM` only, so only a SigV4 signature is taken, and it is
//!   verified for real against the local stack's static credentials (`crate::moto`).
//! - `GET /event/realtime` ([`REALTIME_PATH`]): the real-time WebSocket endpoint, speaking
//!   "Understanding the Event API WebSocket protocol"
//!   (docs.aws.amazon.com/appsync/latest/eventapi/event-api-websocket-protocol, "the protocol
//!   doc" below). Subscribers authorize with Cognito access tokens, checked as the gateway's
//!   authorizer checks the API's ([`JwtAuthorizer`]), and may only subscribe to their own jobs
//!   ([`may_subscribe`], the rule the deployed namespace's `onSubscribe` handler enforces).
//!
//! Channels follow "Understanding channel namespaces" (…/eventapi/channel-namespaces) and the
//! protocol doc's `channel` property: one to five segments of letters, digits and dashes; a
//! subscription may end in `/*` to get every channel below its prefix.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::config::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDateTime, Utc};
use pipeline::domain::{JobId, Owner, WATCH_FOR};
use pipeline::ports::JobStore;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::authorizer::JwtAuthorizer;

/// Where publishers POST their events (the API's HTTP endpoint).
pub const PUBLISH_PATH: &str = "/event";
/// The real-time WebSocket endpoint.
pub const REALTIME_PATH: &str = "/event/realtime";
/// The WebSocket subprotocol a client must offer, and the one the server selects.
pub const SUBPROTOCOL: &str = "aws-appsync-event-ws";
/// The other subprotocol a client offers: this prefix, then the base64url (unpadded) JSON of
/// its authorization headers, `{"host": "<HTTP host>", "Authorization": "<access token>"}`.
pub const AUTHORIZATION_SUBPROTOCOL_PREFIX: &str = "header-";
/// The one channel namespace: a job's events go to `/jobs/<owner's sub>/<job id>`
/// (`pipeline::domain::job_channel`, which the worker publishes to).
pub const JOBS_NAMESPACE: &str = pipeline::domain::LIVE_NAMESPACE;
/// At most this many events in one publish (the limit the pipeline's publisher keeps to).
pub use pipeline::ports::MAX_EVENTS_PER_PUBLISH;
/// At most this many bytes in one event (the service's 240 KB).
pub const MAX_EVENT_BYTES: usize = 240 * 1024;
/// At most this many segments in a channel path, the wildcard included.
pub const MAX_SEGMENTS: usize = 5;
/// At most this many characters in a segment.
pub use pipeline::domain::MAX_SEGMENT_CHARS;
/// What `connection_ack` tells the client: close the connection after this long without a
/// keep-alive.
pub const CONNECTION_TIMEOUT_MS: u64 = 300_000;
/// How often the server sends `{"type":"ka"}` (the service's 60 s).
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// A signature's `X-Amz-Date` may be this far from the server's clock, either way.
pub const MAX_SIGNATURE_SKEW: Duration = Duration::from_secs(5 * 60);
/// The SigV4 signing name of the Event API.
pub const SIGNING_NAME: &str = "appsync";
/// Events waiting for one connection's socket before the hub gives up on it.
pub const OUTBOX_CAPACITY: usize = 1024;

/// A publish body larger than this is refused before it is read whole.
const MAX_PUBLISH_BODY: usize = MAX_EVENTS_PER_PUBLISH * (MAX_EVENT_BYTES + 1024) + 4096;
/// How long a connection given up on is given to hear why before it is dropped.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// The owner rule of the `jobs` namespace, as its deployed `onSubscribe` handler (the
/// template's `JobsChannelNamespace`) enforces it: a subscriber's channel is one of its own
/// jobs, `/jobs/<sub>/<job id>`, or all of them, `/jobs/<sub>/*`, where `<sub>` is the `sub`
/// claim of the subscribe's own access token. Anything else is refused: a wildcard in or
/// before the `<sub>` segment (`/jobs/*`) would reach others' jobs.
pub fn may_subscribe(sub: &str, channel: &Channel) -> bool {
    let own = |namespace: &str, owner: &str| namespace == JOBS_NAMESPACE && owner == sub;
    match (channel.segments.as_slice(), channel.wildcard) {
        ([namespace, owner, _], false) | ([namespace, owner], true) => own(namespace, owner),
        _ => false,
    }
}

/// What the namespace's `onSubscribe` handler does once a subscription passes the owner rule
/// (deployed: it marks a single job watched, so that its worker publishes its text), given
/// the subscriber's `sub` and the channel. It runs before `subscribe_success` is sent, as the
/// handler does; it cannot refuse the subscription.
pub type OnSubscribe =
    Arc<dyn Fn(String, Channel) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The deployed `onSubscribe` handler's write, for [`EventApi::with_on_subscribe`]: a
/// subscription to one job marks it watched for [`WATCH_FOR`] if the subscriber owns it and it
/// is unfinished, so that its worker publishes its text. A subscription to all of the
/// subscriber's jobs marks none, and a job that cannot be marked (another's, a finished one)
/// is still subscribed to, as deployed: its watcher reads the job instead.
pub fn watch_jobs<S: JobStore + 'static>(store: S) -> OnSubscribe {
    let store = Arc::new(store);
    Arc::new(move |sub: String, channel: Channel| {
        let store = store.clone();
        Box::pin(async move {
            let ([_, _, job], false) = (channel.segments(), channel.is_wildcard()) else {
                return;
            };
            let Some(id) = JobId::parse(job) else {
                return;
            };
            match store
                .watch(id, &Owner::new(sub), Utc::now() + WATCH_FOR)
                .await
            {
                Ok(marked) => info!(%channel, marked, "a subscription marked its job watched"),
                Err(error) => warn!(%channel, %error, "a subscription could not mark its job"),
            }
        })
    })
}

/// A channel path: its segments, and for a subscription whether it ends in `/*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    segments: Vec<String>,
    wildcard: bool,
}

impl Channel {
    /// A channel to publish to. As the protocol doc's pattern has it, the leading and trailing
    /// slashes are optional (publish-http's own example publishes to `default/channel`); each
    /// segment is 1 to 50 letters, digits or dashes, and neither starts nor ends with a dash.
    pub fn parse(path: &str) -> Result<Self, String> {
        let channel = Self::parse_subscription(path)?;
        if channel.wildcard {
            return Err(format!(
                "Invalid channel {path:?}: a wildcard is for subscribing; events are published to one channel."
            ));
        }
        Ok(channel)
    }

    /// A channel to subscribe to: a channel path, or one ending in `/*` for every channel
    /// below it ("Use wildcards in your channel subscription", …/eventapi/create-event-api-tutorial).
    pub fn parse_subscription(path: &str) -> Result<Self, String> {
        let invalid = |why: &str| Err(format!("Invalid channel {path:?}: {why}"));
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return invalid("a channel has one to five segments separated by slashes.");
        }
        let mut segments: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
        if segments.len() > MAX_SEGMENTS {
            return invalid("a channel has at most five segments.");
        }
        let wildcard = segments.last().is_some_and(|last| last == "*");
        if wildcard {
            segments.pop();
            if segments.is_empty() {
                return invalid("a wildcard follows a namespace.");
            }
        }
        for segment in &segments {
            if !pipeline::domain::is_channel_segment(segment) {
                return invalid(
                    "each segment is 1 to 50 letters, digits or dashes, and starts and ends with a letter or digit; a wildcard (*) may only end a subscription's channel.",
                );
            }
        }
        Ok(Self { segments, wildcard })
    }

    /// The namespace: the first segment.
    pub fn namespace(&self) -> &str {
        &self.segments[0]
    }

    /// The segments, without a subscription's wildcard.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Whether a subscription's channel ends in `/*`.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether an event published to `channel` reaches a subscription to `self`: the same
    /// channel, or for a wildcard, any channel below its prefix.
    pub fn matches(&self, channel: &Channel) -> bool {
        if self.wildcard {
            channel.segments.len() > self.segments.len()
                && channel.segments.starts_with(&self.segments)
        } else {
            channel.segments == self.segments
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for segment in &self.segments {
            write!(f, "/{segment}")?;
        }
        if self.wildcard {
            write!(f, "/*")?;
        }
        Ok(())
    }
}

/// The Event API emulator: its two endpoints and the hub between them.
pub struct EventApi {
    authorizer: JwtAuthorizer,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    keep_alive: Duration,
    outbox_capacity: usize,
    on_subscribe: Option<OnSubscribe>,
    hub: Hub,
}

impl EventApi {
    /// An Event API in `region` whose subscribers' tokens `authorizer` checks, and whose
    /// publishers sign with the local stack's credentials.
    pub fn new(authorizer: JwtAuthorizer, region: impl Into<String>) -> Self {
        Self {
            authorizer,
            region: region.into(),
            access_key_id: crate::moto::ACCESS_KEY_ID.to_owned(),
            secret_access_key: crate::moto::SECRET_ACCESS_KEY.to_owned(),
            keep_alive: KEEP_ALIVE_INTERVAL,
            outbox_capacity: OUTBOX_CAPACITY,
            on_subscribe: None,
            hub: Hub::default(),
        }
    }

    /// Keep-alives this often instead of every 60 s (tests).
    pub fn with_keep_alive(mut self, every: Duration) -> Self {
        self.keep_alive = every;
        self
    }

    /// At most `capacity` events waiting for one connection (tests).
    pub fn with_outbox_capacity(mut self, capacity: usize) -> Self {
        self.outbox_capacity = capacity.max(1);
        self
    }

    /// Runs `handler` for each subscription admitted (see [`OnSubscribe`]).
    pub fn with_on_subscribe(mut self, handler: OnSubscribe) -> Self {
        self.on_subscribe = Some(handler);
        self
    }

    /// `POST /event` and `GET /event/realtime`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(PUBLISH_PATH, post(publish))
            .route(REALTIME_PATH, get(realtime))
            .with_state(self)
    }

    /// The subscriptions open now, on every connection.
    pub fn subscriptions(&self) -> usize {
        self.hub.lock().len()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors, in the service's shape: `{"errorType": …, "message": …}`, in an `errors` list (the
// protocol doc's `subscribe_error`, `unsubscribe_error`, `publish_error`, `broadcast_error`;
// an HTTP error body is `{"errors": [...]}` as AppSync answers its HTTP requests).

const UNAUTHORIZED: &str = "UnauthorizedException";
const BAD_REQUEST: &str = "BadRequestException";
const NOT_AUTHORIZED: &str = "You are not authorized to make this call.";

fn error(error_type: &str, message: impl Into<String>) -> Value {
    json!({"errorType": error_type, "message": message.into()})
}

/// An HTTP publish refused.
struct Refusal {
    status: StatusCode,
    error_type: &'static str,
    message: String,
}

impl Refusal {
    fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error_type: UNAUTHORIZED,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error_type: BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"errors": [error(self.error_type, self.message)]});
        (self.status, Json(body)).into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP publish ("Publish events via HTTP"): `{"channel": …, "events": ["<JSON>", …]}` →
// `{"successful": [{"identifier": …, "index": …}], "failed": []}`.

async fn publish(State(api): State<Arc<EventApi>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_PUBLISH_BODY).await else {
        return Refusal::bad_request(format!(
            "The request body is larger than {MAX_PUBLISH_BODY} bytes."
        ))
        .into_response();
    };
    if let Err(refusal) = api.verify_signature(&parts, &body, SystemTime::now()) {
        info!(
            error_type = refusal.error_type,
            message = %refusal.message,
            "the Event API refused a publish"
        );
        return refusal.into_response();
    }
    let (channel, events) = match parse_publish(&body) {
        Ok(publish) => publish,
        Err(refusal) => return refusal.into_response(),
    };
    let events: Vec<Arc<str>> = events.into_iter().map(Arc::from).collect();
    let deliveries = api.hub.publish(&channel, &events);
    info!(%channel, events = events.len(), deliveries, "events published");
    let successful: Vec<Value> = (0..events.len())
        .map(|index| json!({"identifier": uuid::Uuid::new_v4().to_string(), "index": index}))
        .collect();
    Json(json!({"successful": successful, "failed": []})).into_response()
}

/// The body of a publish: its channel and 1 to 5 events, each the JSON text of a value.
fn parse_publish(body: &[u8]) -> Result<(Channel, Vec<String>), Refusal> {
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(body) else {
        return Err(Refusal::bad_request(
            "The request body must be a JSON object with a channel and events.",
        ));
    };
    let Some(Value::String(channel)) = body.remove("channel") else {
        return Err(Refusal::bad_request(
            "The request must name a channel (a string).",
        ));
    };
    let channel = Channel::parse(&channel).map_err(Refusal::bad_request)?;
    if channel.namespace() != JOBS_NAMESPACE {
        return Err(unknown_namespace(&channel));
    }
    let Some(Value::Array(events)) = body.remove("events") else {
        return Err(Refusal::bad_request(
            "The request must carry events: a list of strings, each the JSON text of a value.",
        ));
    };
    if events.is_empty() || events.len() > MAX_EVENTS_PER_PUBLISH {
        return Err(Refusal::bad_request(format!(
            "A publish carries 1 to {MAX_EVENTS_PER_PUBLISH} events, not {}.",
            events.len()
        )));
    }
    let mut texts = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        let Value::String(text) = event else {
            return Err(Refusal::bad_request(format!(
                "Event {index} is not a string: each event is the JSON text of a value (stringified)."
            )));
        };
        if text.len() > MAX_EVENT_BYTES {
            return Err(Refusal::bad_request(format!(
                "Event {index} has {} bytes; an event has at most {MAX_EVENT_BYTES}.",
                text.len()
            )));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
            return Err(Refusal::bad_request(format!(
                "Event {index} is not valid JSON: each event is the JSON text of a value."
            )));
        }
        texts.push(text);
    }
    Ok((channel, texts))
}

fn unknown_namespace(channel: &Channel) -> Refusal {
    Refusal::bad_request(format!(
        "The channel {channel} is in no namespace of this API: its only namespace is {JOBS_NAMESPACE}."
    ))
}

// ---------------------------------------------------------------------------------------------
// SigV4, verified as AWS does: the request is signed again, at its own `X-Amz-Date`, over the
// headers it says it signed, and the two signatures are compared.

/// `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`, its parts.
struct SigV4Header<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_sigv4(value: &str) -> Result<Option<SigV4Header<'_>>, Refusal> {
    let Some(rest) = value.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Ok(None);
    };
    let mut fields = HashMap::new();
    for field in rest.split(',') {
        if let Some((name, value)) = field.trim().split_once('=') {
            fields.insert(name, value);
        }
    }
    let field = |name: &str| {
        fields.get(name).copied().ok_or_else(|| {
            Refusal::bad_request(format!(
                "Authorization header requires '{name}' parameter. Authorization={value}"
            ))
        })
    };
    Ok(Some(SigV4Header {
        credential: field("Credential")?,
        signed_headers: field("SignedHeaders")?,
        signature: field("Signature")?,
    }))
}

impl EventApi {
    /// The publish's SigV4 signature, checked against our credentials at `now`. A caller
    /// without one (no `Authorization`, a Cognito token, an API key) is `401`, as AppSync
    /// answers a request its authorization modes refuse; a signature that is malformed, stale
    /// or wrong is `400 BadRequestException`, as AppSync answers those.
    fn verify_signature(&self, parts: &Parts, body: &[u8], now: SystemTime) -> Result<(), Refusal> {
        let Some(authorization) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(Refusal::unauthorized(
                "Valid authorization header not provided.",
            ));
        };
        let authorization = authorization
            .to_str()
            .map_err(|_| Refusal::unauthorized(NOT_AUTHORIZED))?;
        // The namespace publishes with AWS_IAM only: a bearer token is no authorization here.
        let sigv4 =
            parse_sigv4(authorization)?.ok_or_else(|| Refusal::unauthorized(NOT_AUTHORIZED))?;

        let amz_date = parts
            .headers
            .get("x-amz-date")
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| {
                Refusal::bad_request(
                    "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
                )
            })?;
        let signed_at = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
            .map(|at| at.and_utc())
            .map_err(|_| {
                Refusal::bad_request(format!(
                    "X-Amz-Date must be in the ISO8601 basic format YYYYMMDD'T'HHMMSS'Z', not {amz_date}."
                ))
            })?;

        let scope: Vec<&str> = sigv4.credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = scope[..] else {
            return Err(Refusal::bad_request(format!(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{}'.",
                sigv4.credential
            )));
        };
        if access_key_id != self.access_key_id {
            return Err(Refusal::unauthorized(
                "The security token included in the request is invalid.",
            ));
        }
        if date != &amz_date[..8] {
            return Err(Refusal::bad_request(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{}', from '{amz_date}'.",
                &amz_date[..8]
            )));
        }
        if region != self.region {
            return Err(Refusal::bad_request(format!(
                "Credential should be scoped to a valid region, not '{region}'."
            )));
        }
        if service != SIGNING_NAME {
            return Err(Refusal::bad_request(format!(
                "Credential should be scoped to correct service: '{SIGNING_NAME}'."
            )));
        }
        if terminator != "aws4_request" {
            return Err(Refusal::bad_request(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
            )));
        }

        let now: DateTime<Utc> = now.into();
        let skew = chrono::Duration::from_std(MAX_SIGNATURE_SKEW).expect("five minutes");
        let basic = |at: DateTime<Utc>| at.format("%Y%m%dT%H%M%SZ").to_string();
        if signed_at < now - skew {
            return Err(Refusal::bad_request(format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 5 min.)",
                basic(now - skew),
                basic(now)
            )));
        }
        if signed_at > now + skew {
            return Err(Refusal::bad_request(format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + 5 min.)",
                basic(now + skew),
                basic(now)
            )));
        }

        let expected = self.signature(parts, body, &sigv4, signed_at.into())?;
        if !constant_time_eq(expected.as_bytes(), sigv4.signature.as_bytes()) {
            return Err(Refusal::bad_request(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
            ));
        }
        Ok(())
    }

    /// The signature of this request with our secret, over exactly the headers the client
    /// says it signed (the signer adds `host` and `x-amz-date` itself, as a client's does).
    fn signature(
        &self,
        parts: &Parts,
        body: &[u8],
        sigv4: &SigV4Header<'_>,
        signed_at: SystemTime,
    ) -> Result<String, Refusal> {
        let names: Vec<&str> = sigv4.signed_headers.split(';').collect();
        let mut headers = Vec::new();
        for name in &names {
            for value in parts.headers.get_all(*name) {
                let value = value
                    .to_str()
                    .map_err(|_| Refusal::bad_request(format!("Header {name} is not text.")))?;
                headers.push((*name, value));
            }
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("localhost");
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        let uri = format!("http://{host}{path}");
        let identity = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "local-stack",
        )
        .into();
        let mut settings = SigningSettings::default();
        // Sign what the client signed, nothing left out by default.
        settings.excluded_headers = None;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SIGNING_NAME)
            .time(signed_at)
            .settings(settings)
            .build()
            .map_err(|error| Refusal::bad_request(error.to_string()))?
            .into();
        let request = SignableRequest::new(
            parts.method.as_str(),
            uri,
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|error| Refusal::bad_request(format!("The request cannot be signed: {error}.")))?;
        let output = sign(request, &params).map_err(|error| {
            Refusal::bad_request(format!("The request cannot be signed: {error}."))
        })?;
        Ok(output.signature().to_owned())
    }
}

/// Compares two signatures without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------------
// The hub: subscriptions by connection, and delivery of published events to them.

/// One event for one subscription, waiting for its connection's socket.
struct Delivery {
    subscription: Arc<str>,
    event: Arc<str>,
}

/// A connection's queue of deliveries. It is bounded: a subscriber that does not read its
/// socket must not hold up publishers nor make the emulator grow without bound, so when the
/// queue is full the hub drops that connection's subscriptions and tells the connection,
/// which sends a `broadcast_error` for each and closes.
struct Outbox {
    deliveries: mpsc::Sender<Delivery>,
    overflowed: Notify,
}

struct Subscription {
    connection: u64,
    id: Arc<str>,
    channel: Channel,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct Hub {
    subscriptions: Mutex<Vec<Subscription>>,
    next_connection: AtomicU64,
}

impl Hub {
    fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    fn subscribe(&self, subscription: Subscription) {
        self.lock().push(subscription);
    }

    fn unsubscribe(&self, connection: u64, id: &str) {
        self.lock()
            .retain(|sub| !(sub.connection == connection && &*sub.id == id));
    }

    fn disconnect(&self, connection: u64) {
        self.lock().retain(|sub| sub.connection != connection);
    }

    /// Queues `events`, in order, for every subscription whose channel matches; never waits.
    /// Returns how many deliveries were queued.
    fn publish(&self, channel: &Channel, events: &[Arc<str>]) -> usize {
        let mut subscriptions = self.lock();
        let mut given_up = HashSet::new();
        let mut queued = 0;
        for sub in subscriptions.iter() {
            if given_up.contains(&sub.connection) || !sub.channel.matches(channel) {
                continue;
            }
            for event in events {
                let delivery = Delivery {
                    subscription: sub.id.clone(),
                    event: event.clone(),
                };
                match sub.outbox.deliveries.try_send(delivery) {
                    Ok(()) => queued += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        warn!(
                            connection = sub.connection,
                            "a subscriber does not read its events: its connection is dropped"
                        );
                        sub.outbox.overflowed.notify_one();
                        given_up.insert(sub.connection);
                        break;
                    }
                    // The connection is gone; its own clean-up may not have run yet.
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        given_up.insert(sub.connection);
                        break;
                    }
                }
            }
        }
        subscriptions.retain(|sub| !given_up.contains(&sub.connection));
        queued
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscription>> {
        self.subscriptions.lock().expect("hub lock")
    }
}

// ---------------------------------------------------------------------------------------------
// The real-time endpoint (the protocol doc).

/// Why a connection is refused: sent as `{"type":"connection_error","errors":[…]}`, then the
/// socket is closed. The Events docs do not say how a connection is refused; AppSync's
/// GraphQL real-time endpoint, whose protocol this one follows, refuses so (rather than
/// refusing the upgrade), which lets a browser see why.
struct ConnectionRefusal {
    error: Value,
    close_code: u16,
}

/// Close codes (RFC 6455): policy violation, protocol error.
const CLOSE_POLICY: u16 = 1008;
const CLOSE_PROTOCOL: u16 = 1002;

async fn realtime(
    State(api): State<Arc<EventApi>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let admitted = api.admit(&headers, upgrade.requested_protocols()).await;
    upgrade
        .protocols([SUBPROTOCOL])
        .on_upgrade(move |socket| async move {
            match admitted {
                Ok(sub) => api.serve(socket, sub).await,
                Err(refusal) => refuse(socket, refusal).await,
            }
        })
}

impl EventApi {
    /// The connection's authorization, from its subprotocols ("Handshake details to establish
    /// the WebSocket connection" and "Amazon Cognito user pools … subprotocol format"): the
    /// `host` of the HTTP endpoint, and a valid access token. Returns the token's `sub`.
    async fn admit<'a>(
        &self,
        headers: &HeaderMap,
        offered: impl Iterator<Item = &'a HeaderValue>,
    ) -> Result<String, ConnectionRefusal> {
        let offered: Vec<&str> = offered
            .filter_map(|protocol| protocol.to_str().ok())
            .collect();
        if !offered.contains(&SUBPROTOCOL) {
            return Err(ConnectionRefusal {
                error: error(
                    "NoProtocolError",
                    format!("The WebSocket subprotocol {SUBPROTOCOL} is required."),
                ),
                close_code: CLOSE_PROTOCOL,
            });
        }
        let unauthorized = |why: String| {
            info!(%why, "the Event API refused a connection");
            ConnectionRefusal {
                error: error(UNAUTHORIZED, NOT_AUTHORIZED),
                close_code: CLOSE_POLICY,
            }
        };
        let Some(encoded) = offered
            .iter()
            .find_map(|protocol| protocol.strip_prefix(AUTHORIZATION_SUBPROTOCOL_PREFIX))
        else {
            return Err(unauthorized("no header- subprotocol".into()));
        };
        let fields = URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .ok()
            .and_then(|json| serde_json::from_slice::<Map<String, Value>>(&json).ok())
            .ok_or_else(|| unauthorized("the header- subprotocol is not base64url JSON".into()))?;
        // The host of the HTTP endpoint, which is this one's (the gateway serves both).
        let our_host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        match field(&fields, "host") {
            Some(host) if host.eq_ignore_ascii_case(our_host) => {}
            other => {
                return Err(unauthorized(format!(
                    "host {other:?} is not this API's {our_host:?}"
                )));
            }
        }
        let claims = self
            .authorizer
            .authorize(field(&fields, "authorization"))
            .await
            .map_err(|rejection| unauthorized(rejection.to_string()))?;
        claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| unauthorized("the token has no sub".into()))
    }

    /// One admitted connection, until either side closes it.
    async fn serve(self: Arc<Self>, mut socket: WebSocket, sub: String) {
        let mut connection = Connection {
            id: self.hub.connection_id(),
            subscriptions: HashSet::new(),
        };
        info!(connection = connection.id, %sub, "Event API connection opened");
        let (deliveries, mut waiting) = mpsc::channel(self.outbox_capacity);
        let outbox = Arc::new(Outbox {
            deliveries,
            overflowed: Notify::new(),
        });
        let start = tokio::time::Instant::now() + self.keep_alive;
        let mut keep_alive = tokio::time::interval_at(start, self.keep_alive);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                biased;
                () = outbox.overflowed.notified() => {
                    farewell(&mut socket, &connection).await;
                    break;
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        self.answer(text.as_str(), &mut connection, &outbox).await
                    }
                    Some(Ok(Message::Binary(_))) => unsupported("binary", None),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                },
                Some(delivery) = waiting.recv() => {
                    // The protocol doc's data message; the event is the published JSON text,
                    // one message per event ("Subscribed clients receive each message
                    // individually", …/eventapi/create-event-api-tutorial).
                    json!({"type": "data", "id": &*delivery.subscription, "event": &*delivery.event})
                }
                _ = keep_alive.tick() => json!({"type": "ka"}),
            };
            let sent = tokio::select! {
                biased;
                () = outbox.overflowed.notified() => {
                    farewell(&mut socket, &connection).await;
                    break;
                }
                sent = socket.send(Message::text(message.to_string())) => sent,
            };
            if sent.is_err() {
                break;
            }
        }
        self.hub.disconnect(connection.id);
        info!(connection = connection.id, "Event API connection closed");
    }

    /// The answer to one message from the client.
    async fn answer(&self, text: &str, connection: &mut Connection, outbox: &Arc<Outbox>) -> Value {
        let message = serde_json::from_str::<Map<String, Value>>(text).unwrap_or_default();
        let id = message.get("id").and_then(Value::as_str);
        match message.get("type").and_then(Value::as_str) {
            // The protocol doc's connection acknowledge message.
            Some("connection_init") => {
                json!({"type": "connection_ack", "connectionTimeoutMs": CONNECTION_TIMEOUT_MS})
            }
            Some("subscribe") => match self.subscribe(&message, connection, outbox).await {
                Ok(id) => json!({"type": "subscribe_success", "id": id}),
                Err(error) => json!({"type": "subscribe_error", "id": id, "errors": [error]}),
            },
            Some("unsubscribe") => match id {
                Some(id) if connection.subscriptions.remove(id) => {
                    self.hub.unsubscribe(connection.id, id);
                    json!({"type": "unsubscribe_success", "id": id})
                }
                _ => json!({
                    "type": "unsubscribe_error",
                    "id": id,
                    "errors": [error(
                        "UnknownOperationError",
                        format!("Unknown operation id {}", id.unwrap_or_default()),
                    )],
                }),
            },
            // The namespace publishes with AWS_IAM only, over HTTP: a subscriber's token
            // may not publish (the protocol doc's publish_error).
            Some("publish") => json!({
                "type": "publish_error",
                "id": id,
                "errors": [error(UNAUTHORIZED, NOT_AUTHORIZED)],
            }),
            other => unsupported(other.unwrap_or("unknown"), id),
        }
    }

    /// A subscribe message, checked in the order AppSync checks it: its id, its channel and
    /// namespace, its own authorization (an access token, as at connect), then the owner rule.
    /// Returns the subscription's id.
    async fn subscribe(
        &self,
        message: &Map<String, Value>,
        connection: &mut Connection,
        outbox: &Arc<Outbox>,
    ) -> Result<String, Value> {
        let id = message
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| valid_operation_id(id))
            .ok_or_else(|| {
                error(
                    BAD_REQUEST,
                    "A subscribe needs an id of 1 to 128 letters, digits, -, _ or +.",
                )
            })?;
        if connection.subscriptions.contains(id) {
            return Err(error(
                "DuplicatedOperationError",
                format!("Duplicated operation with id {id}"),
            ));
        }
        let channel = message
            .get("channel")
            .and_then(Value::as_str)
            .ok_or_else(|| error(BAD_REQUEST, "A subscribe needs a channel."))
            .and_then(|path| {
                Channel::parse_subscription(path).map_err(|why| error(BAD_REQUEST, why))
            })?;
        if channel.namespace() != JOBS_NAMESPACE {
            return Err(error(BAD_REQUEST, unknown_namespace(&channel).message));
        }
        let authorization = message
            .get("authorization")
            .and_then(Value::as_object)
            .and_then(|fields| field(fields, "authorization"));
        let claims = match self.authorizer.authorize(authorization).await {
            Ok(claims) => claims,
            Err(rejection) => {
                info!(%rejection, %channel, "the Event API refused a subscription");
                return Err(error(UNAUTHORIZED, NOT_AUTHORIZED));
            }
        };
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        if !may_subscribe(sub, &channel) {
            info!(%sub, %channel, "the Event API refused a subscription to another's channel");
            return Err(error(
                UNAUTHORIZED,
                format!(
                    "{NOT_AUTHORIZED} A subscriber may only subscribe to its own jobs: /{JOBS_NAMESPACE}/<its sub>/<job id> or /{JOBS_NAMESPACE}/<its sub>/*."
                ),
            ));
        }
        if let Some(handler) = &self.on_subscribe {
            handler(sub.to_owned(), channel.clone()).await;
        }
        let id: Arc<str> = Arc::from(id);
        connection.subscriptions.insert(id.clone());
        self.hub.subscribe(Subscription {
            connection: connection.id,
            id: id.clone(),
            channel,
            outbox: outbox.clone(),
        });
        Ok(id.to_string())
    }
}

/// One connection's own state.
struct Connection {
    id: u64,
    subscriptions: HashSet<Arc<str>>,
}

/// The protocol doc's `id` property: `/^[a-zA-Z0-9-_+]{1,128}$/`.
fn valid_operation_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_+".contains(&byte))
}

/// An authorization field, its name in any case (HTTP header names are; the protocol doc
/// writes both `Authorization` and `authorization`).
fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| value.as_str())
}

/// The answer to a message type the endpoint does not take, in the shape of AppSync's
/// real-time `error` message.
fn unsupported(kind: &str, id: Option<&str>) -> Value {
    let mut message = json!({
        "type": "error",
        "errors": [error(
            "UnsupportedOperation",
            format!("{kind} not supported through the realtime channel"),
        )],
    });
    if let Some(id) = id {
        message["id"] = json!(id);
    }
    message
}

/// A refused connection: why, then the close.
async fn refuse(mut socket: WebSocket, refusal: ConnectionRefusal) {
    let message = json!({"type": "connection_error", "errors": [refusal.error]});
    let _ = socket.send(Message::text(message.to_string())).await;
    let close = CloseFrame {
        code: refusal.close_code,
        reason: "connection refused".into(),
    };
    let _ = socket.send(Message::Close(Some(close))).await;
}

/// A connection the hub gave up on: each of its subscriptions gets the protocol doc's
/// `broadcast_error` if the socket takes it within a moment, then the connection is closed.
async fn farewell(socket: &mut WebSocket, connection: &Connection) {
    let goodbye = async {
        for id in &connection.subscriptions {
            let message = json!({
                "type": "broadcast_error",
                "id": &**id,
                "errors": [error(
                    "MessageProcessingError",
                    "The connection did not read its events fast enough; they were dropped and the connection is closed.",
                )],
            });
            socket.send(Message::text(message.to_string())).await?;
        }
        let close = CloseFrame {
            code: CLOSE_POLICY,
            reason: "too slow".into(),
        };
        socket.send(Message::Close(Some(close))).await
    };
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, goodbye).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_take_the_documented_paths() {
        for path in [
            "/jobs/abc/123",
            "jobs/abc/123",
            "/jobs/abc/123/",
            "/a/b/c/d/e",
            "/jobs",
            "/Jobs-1/A9/x",
            &format!("/jobs/{}", "a".repeat(50)),
        ] {
            assert!(Channel::parse(path).is_ok(), "{path}");
        }
        assert_eq!(
            Channel::parse("jobs/abc/").unwrap().to_string(),
            "/jobs/abc"
        );
        for path in [
            "",
            "/",
            "//",
            "/jobs//x",
            "/jobs/a b",
            "/jobs/-x",
            "/jobs/x-",
            "/jobs/ü",
            "/jobs/a_b",
            "/a/b/c/d/e/f",
            "/jobs/*",
            "/jobs/*/x",
            &format!("/jobs/{}", "a".repeat(51)),
        ] {
            assert!(Channel::parse(path).is_err(), "{path:?}");
        }
    }

    #[test]
    fn a_wildcard_ends_a_subscription_and_matches_below_its_prefix() {
        let all = Channel::parse_subscription("/jobs/u1/*").unwrap();
        assert_eq!(all.to_string(), "/jobs/u1/*");
        let channel = |path| Channel::parse(path).unwrap();
        assert!(all.matches(&channel("/jobs/u1/j1")));
        assert!(all.matches(&channel("/jobs/u1/j1/x")));
        assert!(!all.matches(&channel("/jobs/u1")));
        assert!(!all.matches(&channel("/jobs/u2/j1")));
        let one = Channel::parse_subscription("/jobs/u1/j1").unwrap();
        assert!(one.matches(&channel("/jobs/u1/j1")));
        assert!(!one.matches(&channel("/jobs/u1/j1/x")));
        for path in ["/*", "*", "/jobs/*/x", "/a/b/c/d/e/*"] {
            assert!(Channel::parse_subscription(path).is_err(), "{path}");
        }
    }

    #[test]
    fn the_owner_rule_keeps_each_subscriber_to_its_own_jobs() {
        let allowed = |path| may_subscribe("u1", &Channel::parse_subscription(path).unwrap());
        assert!(allowed("/jobs/u1/j1"));
        assert!(allowed("/jobs/u1/*"));
        assert!(!allowed("/jobs/u1"));
        assert!(!allowed("/jobs/u1/j1/x"));
        assert!(!allowed("/jobs/u1/j1/*"));
        assert!(!allowed("/jobs/*"));
        assert!(!allowed("/jobs/u2/j1"));
        assert!(!allowed("/jobs/u2/*"));
        assert!(!allowed("/jobs/u10/j1"));
        assert!(!allowed("/other/u1/j1"));
        assert!(!allowed("/jobs"));
    }

    #[test]
    fn operation_ids_follow_the_documented_pattern() {
        assert!(valid_operation_id("ee849ef0-cf23-4cb8-9fcb-152ae4fd1e69"));
        assert!(valid_operation_id("a_b+c"));
        assert!(!valid_operation_id(""));
        assert!(!valid_operation_id("a b"));
        assert!(!valid_operation_id(&"a".repeat(129)));
    }
}
