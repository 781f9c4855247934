//! The local Event API (AppSync Events' part of the local stack), behind the real gateway,
//! through a real WebSocket client, SigV4-signed publishes and real Cognito tokens from moto:
//! what a publisher signs reaches the job's owner, in order, as the service's documented
//! messages, and nothing reaches anyone else.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::config::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use axum::Router;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{SinkExt, StreamExt};
use integration_tests::*;
use local::events::EventApi;
use local::gateway::{self, GatewayConfig};
use local::provision::{UserPool, create_user_pool};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const NOT_AUTHORIZED: &str = "You are not authorized to make this call.";
const OWNER_RULE: &str = "You are not authorized to make this call. A subscriber may only subscribe to its own jobs: /jobs/<its sub>/<job id> or /jobs/<its sub>/*.";
const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
/// How long a test waits for a message that should come.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a test listens for a message that should not come.
const QUIET: Duration = Duration::from_millis(300);

/// The gateway with the Event API mounted, and two users of its pool.
struct Events {
    /// `127.0.0.1:PORT`, the HTTP endpoint's host.
    host: String,
    api: Arc<EventApi>,
    ada: Tokens,
    bob: Tokens,
    /// Seconds added to the Event API's clock for tokens: tests expire tokens with it.
    skew: Arc<AtomicI64>,
}

impl Events {
    async fn start(name: &str) -> Self {
        Self::start_with(name, |api| api).await
    }

    /// An Event API whose keep-alives come every 200 ms, changed by `configure`.
    async fn start_with(name: &str, configure: impl FnOnce(EventApi) -> EventApi) -> Self {
        let aws = sdk_config(&moto_url()).await;
        let pool = create_user_pool(&aws, name).await.unwrap();
        let ada = tokens(&aws, &pool, "ada@example.com").await;
        let bob = tokens(&aws, &pool, "bob@example.com").await;
        let skew = Arc::new(AtomicI64::new(0));
        let clock = {
            let skew = skew.clone();
            Arc::new(move || (chrono::Utc::now().timestamp() + skew.load(Ordering::SeqCst)) as u64)
        };
        let api = EventApi::new(
            authorizer_with_clock(&pool, jwks_url(&pool), clock),
            "us-east-1",
        )
        .with_keep_alive(Duration::from_millis(200));
        let api = Arc::new(configure(api));
        let host = serve(&pool, api.clone()).await;
        Self {
            host,
            api,
            ada,
            bob,
            skew,
        }
    }

    fn realtime_url(&self) -> String {
        format!("ws://{}/event/realtime", self.host)
    }

    /// The subprotocol that authorizes a connection with `token`.
    fn header_protocol(&self, token: &str) -> String {
        header_protocol(&json!({"host": self.host, "Authorization": token}))
    }

    /// A connection authorized by `token`, acknowledged.
    async fn connect(&self, token: &str) -> Client {
        let mut client = self
            .open(&["aws-appsync-event-ws", &self.header_protocol(token)])
            .await;
        client.send(json!({"type": "connection_init"})).await;
        assert_eq!(client.next().await, connection_ack());
        client
    }

    /// A WebSocket to the real-time endpoint offering `protocols` (none: no header).
    async fn open(&self, protocols: &[&str]) -> Client {
        let stream = TcpStream::connect(&self.host).await.unwrap();
        self.open_on(stream, protocols).await
    }

    async fn open_on(&self, stream: TcpStream, protocols: &[&str]) -> Client {
        let mut request = self.realtime_url().into_client_request().unwrap();
        if !protocols.is_empty() {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&protocols.join(", ")).unwrap(),
            );
        }
        let (socket, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("the WebSocket handshake");
        Client {
            socket,
            protocol: response
                .headers()
                .get("sec-websocket-protocol")
                .map(|value| value.to_str().unwrap().to_owned()),
        }
    }

    /// `token`'s subscription `id` to `channel`, which must succeed.
    async fn subscribe(&self, client: &mut Client, id: &str, channel: &str, token: &str) {
        let answer = client.subscribe(id, channel, token, &self.host).await;
        assert_eq!(
            answer,
            json!({"type": "subscribe_success", "id": id}),
            "{channel}"
        );
    }

    async fn publish(&self, channel: &str, events: &[&str]) -> (u16, Value) {
        let body = json!({"channel": channel, "events": events}).to_string();
        self.post(&body, Signing::default()).await
    }

    /// `POST /event` with `body`, authorized as `signing` says.
    async fn post(&self, body: &str, signing: Signing) -> (u16, Value) {
        let mut call = reqwest::Client::new()
            .post(format!("http://{}/event", self.host))
            .header("content-type", "application/json");
        match signing.authorization {
            Authorization::SigV4 => {
                let signed_host = signing.host.as_deref().unwrap_or(&self.host);
                let signed_body = signing.signed_body.as_deref().unwrap_or(body);
                for (name, value) in sigv4_headers(signed_host, signed_body, &signing) {
                    call = call.header(name, value);
                }
            }
            Authorization::Header(value) => call = call.header("authorization", value),
            Authorization::None => {}
        }
        let response = call.body(body.to_owned()).send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!(response.headers()["content-type"], "application/json");
        (status, response.json().await.unwrap())
    }

    fn ada_channel(&self, job: &str) -> String {
        format!("/jobs/{}/{job}", self.ada.sub)
    }

    fn bob_channel(&self, job: &str) -> String {
        format!("/jobs/{}/{job}", self.bob.sub)
    }
}

/// Serves the gateway with `events` mounted (and no functions behind it) on a free port.
async fn serve(pool: &UserPool, events: Arc<EventApi>) -> String {
    let web_dir = std::env::temp_dir().join("events-test-web");
    std::fs::create_dir_all(&web_dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = gateway::router(
        Router::new(),
        Router::new(),
        events.router(),
        authorizer(pool, jwks_url(pool), 0),
        GatewayConfig {
            web_dir,
            web_config: json!({}),
            cognito_endpoint: format!("{}/", moto_url()),
            allowed_origin: ORIGIN.into(),
            port,
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("127.0.0.1:{port}")
}

fn header_protocol(fields: &Value) -> String {
    format!(
        "header-{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(fields).unwrap())
    )
}

fn connection_ack() -> Value {
    json!({"type": "connection_ack", "connectionTimeoutMs": 300000})
}

fn data(id: &str, event: &str) -> Value {
    json!({"type": "data", "id": id, "event": event})
}

/// How a publish is authorized.
#[derive(Default)]
enum Authorization {
    #[default]
    SigV4,
    Header(String),
    None,
}

/// A publish's SigV4 signing, right by default; each field makes it wrong in one way.
struct Signing {
    authorization: Authorization,
    access_key_id: String,
    secret: String,
    region: String,
    service: String,
    at: SystemTime,
    /// Signed for another host than the request's.
    host: Option<String>,
    /// Signed over another body than the one sent.
    signed_body: Option<String>,
}

impl Default for Signing {
    fn default() -> Self {
        Self {
            authorization: Authorization::SigV4,
            access_key_id: local::moto::ACCESS_KEY_ID.into(),
            secret: local::moto::SECRET_ACCESS_KEY.into(),
            region: "us-east-1".into(),
            service: "appsync".into(),
            at: SystemTime::now(),
            host: None,
            signed_body: None,
        }
    }
}

/// The headers that SigV4 adds to `POST http://{host}/event` with `body`, as a publisher's
/// signer adds them (`x-amz-date`, `authorization`).
fn sigv4_headers(host: &str, body: &str, signing: &Signing) -> Vec<(String, String)> {
    let identity =
        Credentials::new(&signing.access_key_id, &signing.secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&signing.region)
        .name(&signing.service)
        .time(signing.at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let request = SignableRequest::new(
        "POST",
        format!("http://{host}/event"),
        [("content-type", "application/json"), ("host", host)].into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// One WebSocket client of the real-time endpoint.
struct Client {
    socket: WebSocketStream<TcpStream>,
    /// The subprotocol the server selected.
    protocol: Option<String>,
}

/// What a client reads next.
#[derive(Debug, PartialEq)]
enum Read {
    Json(Value),
    Closed(Option<CloseFrame>),
    Broken,
}

impl Client {
    async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.unwrap();
    }

    /// The next message, keep-alives included.
    async fn read(&mut self) -> Read {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a message within the patience");
            return match next {
                Some(Ok(Message::Text(text))) => Read::Json(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(frame))) => Read::Closed(frame),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(bytes))) => panic!("a binary message: {bytes:?}"),
                Some(Err(_)) | None => Read::Broken,
            };
        }
    }

    /// The next JSON message that is not a keep-alive.
    async fn next(&mut self) -> Value {
        loop {
            match self.read().await {
                Read::Json(message) if message == json!({"type": "ka"}) => continue,
                Read::Json(message) => return message,
                other => panic!("a message, not {other:?}"),
            }
        }
    }

    /// Asserts that nothing but keep-alives comes for a moment.
    async fn assert_quiet(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(message, json!({"type": "ka"}), "nothing else was due");
                }
                Ok(other) => panic!("the connection is still open: {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, id: &str, channel: &str, token: &str, host: &str) -> Value {
        let authorization = json!({"Authorization": token, "host": host});
        self.subscribe_with(id, channel, authorization).await
    }

    async fn subscribe_with(&mut self, id: &str, channel: &str, authorization: Value) -> Value {
        self.send(json!({
            "type": "subscribe",
            "id": id,
            "channel": channel,
            "authorization": authorization,
        }))
        .await;
        self.next().await
    }

    /// The connection refused: a `connection_error` with `error`, then a close with `code`.
    async fn assert_refused(mut self, error: Value, code: CloseCode, case: &str) {
        assert_eq!(
            self.read().await,
            Read::Json(json!({"type": "connection_error", "errors": [error]})),
            "{case}"
        );
        match self.read().await {
            Read::Closed(Some(frame)) => assert_eq!(frame.code, code, "{case}"),
            other => panic!("{case}: a close, not {other:?}"),
        }
    }
}

fn unauthorized(message: &str) -> Value {
    json!({"errorType": "UnauthorizedException", "message": message})
}

fn subscribe_error(id: &str, error: Value) -> Value {
    json!({"type": "subscribe_error", "id": id, "errors": [error]})
}

/// Asserts an HTTP error in AppSync's shape, `{"errors": [{"errorType", "message"}]}`, and
/// returns the message.
fn assert_http_error(answer: &(u16, Value), status: u16, error_type: &str, case: &str) -> String {
    let (got, body) = answer;
    assert_eq!(*got, status, "{case}: {body}");
    let errors = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: {body}"));
    assert_eq!(errors.len(), 1, "{case}: {body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{case}: {body}");
    assert_eq!(errors[0]["errorType"], error_type, "{case}: {body}");
    assert_eq!(errors[0].as_object().unwrap().len(), 2, "{case}: {body}");
    errors[0]["message"].as_str().unwrap().to_owned()
}

/// Asserts a successful publish of `count` events: each index once, each with its own UUID.
fn assert_published(answer: &(u16, Value), count: usize) {
    let (status, body) = answer;
    assert_eq!(*status, 200, "{body}");
    assert_eq!(body["failed"], json!([]), "{body}");
    let successful = body["successful"].as_array().unwrap();
    assert_eq!(successful.len(), count, "{body}");
    let mut identifiers = std::collections::HashSet::new();
    for (index, entry) in successful.iter().enumerate() {
        assert_eq!(entry["index"], index, "{body}");
        let identifier = entry["identifier"].as_str().unwrap();
        uuid::Uuid::parse_str(identifier).unwrap();
        assert!(identifiers.insert(identifier.to_owned()), "{body}");
        assert_eq!(entry.as_object().unwrap().len(), 2, "{body}");
    }
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn a_connection_is_acknowledged_and_kept_alive() {
    let events = Events::start("events-ack").await;
    let mut client = events
        .open(&[
            "aws-appsync-event-ws",
            &events.header_protocol(&events.ada.access),
        ])
        .await;
    assert_eq!(client.protocol.as_deref(), Some("aws-appsync-event-ws"));
    client.send(json!({"type": "connection_init"})).await;
    assert_eq!(client.next().await, connection_ack());
    // Keep-alives every 200 ms here (60 s by default), and nothing else.
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(client.read().await, Read::Json(json!({"type": "ka"})));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "three keep-alives 200 ms apart took {took:?}"
    );

    // connection_init is optional; a token may use the Bearer scheme.
    let bearer = format!("Bearer {}", events.ada.access);
    let mut client = events
        .open(&["aws-appsync-event-ws", &events.header_protocol(&bearer)])
        .await;
    let channel = events.ada_channel("job-1");
    events
        .subscribe(&mut client, "s1", &channel, &events.ada.access)
        .await;
}

/// The Event API's routes are the gateway's: addressed to it by name only, with its headers.
#[tokio::test]
async fn the_gateway_guards_the_event_api_as_it_guards_the_rest() {
    let events = Events::start("events-gateway").await;
    let port = events.host.rsplit(':').next().unwrap();
    let rebound = format!("attacker.example:{port}");
    let http = reqwest::Client::new();
    let publish = http
        .post(format!("http://{}/event", events.host))
        .header("host", &rebound)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 403);
    let body: Value = publish.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden_host");

    let mut request = events.realtime_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("host", HeaderValue::from_str(&rebound).unwrap());
    let protocols = format!(
        "aws-appsync-event-ws, {}",
        events.header_protocol(&events.ada.access)
    );
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protocols).unwrap(),
    );
    let stream = TcpStream::connect(&events.host).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("the upgrade was refused, not {:?}", other.map(|(_, r)| r)),
    }

    // Publishing is all the HTTP endpoint does; its answers carry the gateway's headers.
    let get = http
        .get(format!("http://{}/event", events.host))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    let publish = http
        .post(format!("http://{}/event", events.host))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(publish.status(), 401);
    assert_eq!(publish.headers()["x-content-type-options"], "nosniff");
    assert!(
        publish
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn a_signed_publish_reaches_its_subscriber_in_order_until_it_unsubscribes() {
    let events = Events::start("events-publish").await;
    let mut client = events.connect(&events.ada.access).await;
    let job = events.ada_channel("job-1");
    events
        .subscribe(&mut client, "s1", &job, &events.ada.access)
        .await;

    let sent = [
        r#"{"text":"Once","seq":1}"#,
        r#""upon""#,
        r#"{"text":"a time","seq":3,"done":false}"#,
        "42",
        "null",
    ];
    assert_published(&events.publish(&job, &sent).await, 5);
    for event in sent {
        assert_eq!(client.next().await, data("s1", event));
    }
    // Another job of the same owner is another channel.
    assert_published(
        &events.publish(&events.ada_channel("job-2"), &["1"]).await,
        1,
    );
    client.assert_quiet().await;

    // The same id again on this connection is refused, and the first subscription stays.
    assert_eq!(
        client
            .subscribe("s1", &job, &events.ada.access, &events.host)
            .await,
        subscribe_error(
            "s1",
            json!({"errorType": "DuplicatedOperationError", "message": "Duplicated operation with id s1"}),
        )
    );
    assert_published(&events.publish(&job, &[r#""still""#]).await, 1);
    assert_eq!(client.next().await, data("s1", r#""still""#));

    client
        .send(json!({"type": "unsubscribe", "id": "s1"}))
        .await;
    assert_eq!(
        client.next().await,
        json!({"type": "unsubscribe_success", "id": "s1"})
    );
    assert_eq!(events.api.subscriptions(), 0);
    assert_published(&events.publish(&job, &[r#""gone""#]).await, 1);
    client.assert_quiet().await;
    client
        .send(json!({"type": "unsubscribe", "id": "s1"}))
        .await;
    assert_eq!(
        client.next().await,
        json!({
            "type": "unsubscribe_error",
            "id": "s1",
            "errors": [{"errorType": "UnknownOperationError", "message": "Unknown operation id s1"}],
        })
    );
}

#[tokio::test]
async fn a_wildcard_subscription_gets_every_job_of_its_owner_and_no_one_elses() {
    let events = Events::start("events-wildcard").await;
    let mut ada = events.connect(&events.ada.access).await;
    let all = format!("/jobs/{}/*", events.ada.sub);
    events
        .subscribe(&mut ada, "all", &all, &events.ada.access)
        .await;
    events
        .subscribe(
            &mut ada,
            "one",
            &events.ada_channel("j1"),
            &events.ada.access,
        )
        .await;
    let mut bob = events.connect(&events.bob.access).await;
    let bobs = format!("/jobs/{}/*", events.bob.sub);
    events
        .subscribe(&mut bob, "mine", &bobs, &events.bob.access)
        .await;

    // Each subscription gets the event once.
    assert_published(&events.publish(&events.ada_channel("j1"), &["1"]).await, 1);
    let mut got = vec![ada.next().await, ada.next().await];
    got.sort_by_key(|message| message["id"].as_str().unwrap().to_owned());
    assert_eq!(got, [data("all", "1"), data("one", "1")]);
    // Anything below the prefix reaches the wildcard, and only it.
    let below = format!("{}/part-2", events.ada_channel("j2"));
    assert_published(&events.publish(&below, &["2"]).await, 1);
    assert_eq!(ada.next().await, data("all", "2"));
    // Another user's jobs reach that user only.
    assert_published(&events.publish(&events.bob_channel("j1"), &["3"]).await, 1);
    assert_eq!(bob.next().await, data("mine", "3"));
    ada.assert_quiet().await;
    bob.assert_quiet().await;
}

#[tokio::test]
async fn nobody_subscribes_to_another_users_jobs() {
    let events = Events::start("events-owner").await;
    let mut ada = events.connect(&events.ada.access).await;
    let (ada_sub, bob_sub) = (&events.ada.sub, &events.bob.sub);
    let mut almost = ada_sub.clone().into_bytes();
    almost[0] = if almost[0] == b'a' { b'b' } else { b'a' };
    let almost = String::from_utf8(almost).unwrap();
    for (case, channel, token) in [
        (
            "another's job",
            format!("/jobs/{bob_sub}/j1"),
            &events.ada.access,
        ),
        (
            "another's jobs",
            format!("/jobs/{bob_sub}/*"),
            &events.ada.access,
        ),
        ("everyone's jobs", "/jobs/*".to_owned(), &events.ada.access),
        ("the namespace", "/jobs".to_owned(), &events.ada.access),
        (
            "her own segment",
            format!("/jobs/{ada_sub}"),
            &events.ada.access,
        ),
        (
            "below one of her jobs",
            format!("/jobs/{ada_sub}/j1/part"),
            &events.ada.access,
        ),
        (
            "all below one of her jobs",
            format!("/jobs/{ada_sub}/j1/*"),
            &events.ada.access,
        ),
        (
            "a sub one letter off",
            format!("/jobs/{almost}/j1"),
            &events.ada.access,
        ),
        (
            "her channel with his token",
            format!("/jobs/{ada_sub}/j1"),
            &events.bob.access,
        ),
        (
            "a sub as a later segment",
            format!("/jobs/x/{ada_sub}"),
            &events.ada.access,
        ),
    ] {
        assert_eq!(
            ada.subscribe("s", &channel, token, &events.host).await,
            subscribe_error("s", unauthorized(OWNER_RULE)),
            "{case}: {channel}"
        );
    }
    for (case, channel) in [
        ("another namespace", format!("/other/{ada_sub}/j1")),
        ("a space", format!("/jobs/{ada_sub}/a b")),
        ("a wildcard before the end", format!("/jobs/*/{ada_sub}")),
        ("no channel", String::new()),
        ("six segments", format!("/jobs/{ada_sub}/a/b/c/d")),
    ] {
        let answer = ada
            .subscribe("s", &channel, &events.ada.access, &events.host)
            .await;
        assert_eq!(answer["type"], "subscribe_error", "{case}: {answer}");
        assert_eq!(answer["id"], "s", "{case}: {answer}");
        assert_eq!(
            answer["errors"][0]["errorType"], "BadRequestException",
            "{case}: {answer}"
        );
    }
    assert_eq!(events.api.subscriptions(), 0);
    // What was refused gets nothing.
    assert_published(&events.publish(&events.bob_channel("j1"), &["1"]).await, 1);
    ada.assert_quiet().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_at_connect_and_at_subscribe() {
    let events = Events::start("events-tokens").await;
    let ada = &events.ada;
    let refused = unauthorized(NOT_AUTHORIZED);
    let forged = jwt::forgeries(&ada.access);
    let mut bad_tokens: Vec<(&str, String)> = forged.clone();
    bad_tokens.push(("an ID token", ada.id.clone()));
    bad_tokens.push((
        "another app client's token",
        ada.other_client_access.clone(),
    ));

    // At connect: a connection_error, then a close (policy violation).
    let mut bad_headers: Vec<(&str, String)> = bad_tokens
        .iter()
        .map(|(case, token)| (*case, events.header_protocol(token)))
        .collect();
    bad_headers.extend([
        ("no token", header_protocol(&json!({"host": events.host}))),
        (
            "another host",
            header_protocol(&json!({"host": "attacker.example", "Authorization": ada.access})),
        ),
        ("not base64url JSON", "header-!!!".to_owned()),
    ]);
    for (case, header) in &bad_headers {
        let client = events.open(&["aws-appsync-event-ws", header]).await;
        client
            .assert_refused(refused.clone(), CloseCode::Policy, case)
            .await;
    }
    let client = events.open(&["aws-appsync-event-ws"]).await;
    client
        .assert_refused(refused.clone(), CloseCode::Policy, "no header- subprotocol")
        .await;
    let client = events.open(&[]).await;
    client
        .assert_refused(
            json!({
                "errorType": "NoProtocolError",
                "message": "The WebSocket subprotocol aws-appsync-event-ws is required.",
            }),
            CloseCode::Protocol,
            "no subprotocol",
        )
        .await;
    // Two hours on, the real token has expired.
    events.skew.store(2 * 3600, Ordering::SeqCst);
    let client = events
        .open(&["aws-appsync-event-ws", &events.header_protocol(&ada.access)])
        .await;
    client
        .assert_refused(refused.clone(), CloseCode::Policy, "an expired token")
        .await;
    events.skew.store(0, Ordering::SeqCst);

    // At subscribe: each subscribe is authorized on its own.
    let mut client = events.connect(&ada.access).await;
    let channel = events.ada_channel("j1");
    for (case, token) in &bad_tokens {
        assert_eq!(
            client.subscribe("s", &channel, token, &events.host).await,
            subscribe_error("s", refused.clone()),
            "{case}"
        );
    }
    for (case, authorization) in [
        ("no authorization", Value::Null),
        ("no token", json!({"host": events.host})),
    ] {
        assert_eq!(
            client.subscribe_with("s", &channel, authorization).await,
            subscribe_error("s", refused.clone()),
            "{case}"
        );
    }
    events.skew.store(2 * 3600, Ordering::SeqCst);
    assert_eq!(
        client
            .subscribe("s", &channel, &ada.access, &events.host)
            .await,
        subscribe_error("s", refused.clone()),
        "an expired token"
    );
    events.skew.store(0, Ordering::SeqCst);
    assert_eq!(events.api.subscriptions(), 0);
    // The connection outlives the refusals, and the lowercase header name is taken too.
    let answer = client
        .subscribe_with("s", &channel, json!({"authorization": ada.access}))
        .await;
    assert_eq!(answer, json!({"type": "subscribe_success", "id": "s"}));
}

#[tokio::test]
async fn only_a_valid_signature_publishes() {
    let events = Events::start("events-sigv4").await;
    let mut client = events.connect(&events.ada.access).await;
    let channel = events.ada_channel("j1");
    events
        .subscribe(&mut client, "s", &channel, &events.ada.access)
        .await;
    let body = json!({"channel": channel, "events": [r#""forged""#]}).to_string();
    let minutes = |n: u64| Duration::from_secs(60 * n);
    let cases: Vec<(&str, Signing, u16, &str, &str)> = vec![
        (
            "no signature",
            Signing {
                authorization: Authorization::None,
                ..Signing::default()
            },
            401,
            "UnauthorizedException",
            "Valid authorization header not provided.",
        ),
        (
            "a Cognito access token (Bearer)",
            Signing {
                authorization: Authorization::Header(format!("Bearer {}", events.ada.access)),
                ..Signing::default()
            },
            401,
            "UnauthorizedException",
            NOT_AUTHORIZED,
        ),
        (
            "a Cognito access token",
            Signing {
                authorization: Authorization::Header(events.ada.access.clone()),
                ..Signing::default()
            },
            401,
            "UnauthorizedException",
            NOT_AUTHORIZED,
        ),
        (
            "another access key",
            Signing {
                access_key_id: "AKIDSOMEONEELSE".into(),
                ..Signing::default()
            },
            401,
            "UnauthorizedException",
            "The security token included in the request is invalid.",
        ),
        (
            "a wrong secret",
            Signing {
                secret: "not-local".into(),
                ..Signing::default()
            },
            400,
            "BadRequestException",
            SIGNATURE_MISMATCH,
        ),
        (
            "a body changed after signing",
            Signing {
                signed_body: Some(body.replace("forged", "honest")),
                ..Signing::default()
            },
            400,
            "BadRequestException",
            SIGNATURE_MISMATCH,
        ),
        (
            "another host",
            Signing {
                host: Some("localhost:1".into()),
                ..Signing::default()
            },
            400,
            "BadRequestException",
            SIGNATURE_MISMATCH,
        ),
        (
            "another service",
            Signing {
                service: "execute-api".into(),
                ..Signing::default()
            },
            400,
            "BadRequestException",
            "Credential should be scoped to correct service: 'appsync'.",
        ),
        (
            "another region",
            Signing {
                region: "eu-west-1".into(),
                ..Signing::default()
            },
            400,
            "BadRequestException",
            "Credential should be scoped to a valid region, not 'eu-west-1'.",
        ),
        (
            "signed ten minutes ago",
            Signing {
                at: SystemTime::now() - minutes(10),
                ..Signing::default()
            },
            400,
            "BadRequestException",
            "Signature expired: ",
        ),
        (
            "signed ten minutes ahead",
            Signing {
                at: SystemTime::now() + minutes(10),
                ..Signing::default()
            },
            400,
            "BadRequestException",
            "Signature not yet current: ",
        ),
    ];
    for (case, signing, status, error_type, message) in cases {
        let answer = events.post(&body, signing).await;
        let got = assert_http_error(&answer, status, error_type, case);
        assert!(got.starts_with(message), "{case}: {got}");
        if !message.ends_with(": ") {
            assert_eq!(got, message, "{case}");
        }
    }
    // A SigV4 header without its signature.
    let stripped = sigv4_headers(&events.host, &body, &Signing::default())
        .into_iter()
        .find(|(name, _)| name == "authorization")
        .map(|(_, value)| value.split(", Signature=").next().unwrap().to_owned())
        .unwrap();
    let answer = events
        .post(
            &body,
            Signing {
                authorization: Authorization::Header(stripped),
                ..Signing::default()
            },
        )
        .await;
    let message = assert_http_error(&answer, 400, "BadRequestException", "no Signature");
    assert!(
        message.starts_with("Authorization header requires 'Signature' parameter."),
        "{message}"
    );
    client.assert_quiet().await;

    // Signed four minutes ago is within the five the service allows; it is delivered.
    let genuine = json!({"channel": channel, "events": [r#""genuine""#]}).to_string();
    let answer = events
        .post(
            &genuine,
            Signing {
                at: SystemTime::now() - minutes(4),
                ..Signing::default()
            },
        )
        .await;
    assert_published(&answer, 1);
    assert_eq!(client.next().await, data("s", r#""genuine""#));
}

#[tokio::test]
async fn malformed_publishes_are_refused_with_400() {
    let events = Events::start("events-malformed").await;
    let mut client = events.connect(&events.ada.access).await;
    let channel = events.ada_channel("j1");
    events
        .subscribe(&mut client, "s", &channel, &events.ada.access)
        .await;
    let sub = &events.ada.sub;
    let event = r#""x""#;
    let too_big = format!("\"{}\"", "a".repeat(240 * 1024 - 1));
    let six = [event; 6];
    let cases: Vec<(&str, String)> = vec![
        ("not JSON", "nope".into()),
        ("not an object", json!([channel, [event]]).to_string()),
        ("no channel", json!({"events": [event]}).to_string()),
        (
            "a channel that is no string",
            json!({"channel": 7, "events": [event]}).to_string(),
        ),
        (
            "an empty channel",
            json!({"channel": "", "events": [event]}).to_string(),
        ),
        (
            "a slash",
            json!({"channel": "/", "events": [event]}).to_string(),
        ),
        (
            "a space",
            json!({"channel": format!("/jobs/{sub}/a b"), "events": [event]}).to_string(),
        ),
        (
            "a leading dash",
            json!({"channel": format!("/jobs/{sub}/-a"), "events": [event]}).to_string(),
        ),
        (
            "an empty segment",
            json!({"channel": format!("/jobs//{sub}"), "events": [event]}).to_string(),
        ),
        (
            "a long segment",
            json!({"channel": format!("/jobs/{sub}/{}", "a".repeat(51)), "events": [event]})
                .to_string(),
        ),
        (
            "six segments",
            json!({"channel": format!("/jobs/{sub}/a/b/c/d"), "events": [event]}).to_string(),
        ),
        (
            "a wildcard",
            json!({"channel": format!("/jobs/{sub}/*"), "events": [event]}).to_string(),
        ),
        (
            "another namespace",
            json!({"channel": format!("/other/{sub}/j1"), "events": [event]}).to_string(),
        ),
        ("no events", json!({"channel": channel}).to_string()),
        (
            "zero events",
            json!({"channel": channel, "events": []}).to_string(),
        ),
        (
            "six events",
            json!({"channel": channel, "events": six}).to_string(),
        ),
        (
            "an event that is no string",
            json!({"channel": channel, "events": [{"x": 1}]}).to_string(),
        ),
        (
            "an event that is no JSON",
            json!({"channel": channel, "events": ["{x"]}).to_string(),
        ),
        (
            "an event over 240 KB",
            json!({"channel": channel, "events": [too_big]}).to_string(),
        ),
    ];
    for (case, body) in &cases {
        let answer = events.post(body, Signing::default()).await;
        let message = assert_http_error(&answer, 400, "BadRequestException", case);
        if *case == "six events" {
            assert_eq!(message, "A publish carries 1 to 5 events, not 6.");
        }
        if *case == "another namespace" {
            assert_eq!(
                message,
                format!(
                    "The channel /other/{sub}/j1 is in no namespace of this API: its only namespace is jobs."
                )
            );
        }
    }
    client.assert_quiet().await;

    // The limits themselves pass: five events, one of 240 KB, and a channel without its
    // leading slash (as the service's own example writes it).
    let largest = format!("\"{}\"", "a".repeat(240 * 1024 - 2));
    let five = ["1", "2", "3", "4", &largest];
    let bare = channel.trim_start_matches('/');
    assert_published(&events.publish(bare, &five).await, 5);
    for event in five {
        assert_eq!(client.next().await, data("s", event));
    }
}

#[tokio::test]
async fn a_subscriber_may_not_publish_over_the_socket() {
    let events = Events::start("events-socket-publish").await;
    let mut client = events.connect(&events.ada.access).await;
    let channel = events.ada_channel("j1");
    events
        .subscribe(&mut client, "s", &channel, &events.ada.access)
        .await;
    client
        .send(json!({
            "type": "publish",
            "id": "p1",
            "channel": channel,
            "events": [r#""from the socket""#],
            "authorization": {"Authorization": events.ada.access, "host": events.host},
        }))
        .await;
    assert_eq!(
        client.next().await,
        json!({"type": "publish_error", "id": "p1", "errors": [unauthorized(NOT_AUTHORIZED)]})
    );
    client.send(json!({"type": "start", "id": "x1"})).await;
    assert_eq!(
        client.next().await,
        json!({
            "type": "error",
            "id": "x1",
            "errors": [{"errorType": "UnsupportedOperation", "message": "start not supported through the realtime channel"}],
        })
    );
    client.send_text("not json").await;
    assert_eq!(
        client.next().await,
        json!({
            "type": "error",
            "errors": [{"errorType": "UnsupportedOperation", "message": "unknown not supported through the realtime channel"}],
        })
    );
    client.assert_quiet().await;
    // The connection still works.
    assert_published(&events.publish(&channel, &["1"]).await, 1);
    assert_eq!(client.next().await, data("s", "1"));
}

/// The worker's publisher (`pipeline::adapters::AppSyncEvents`), aimed at the local Event API
/// with the local stack's credentials, is taken and delivered.
#[tokio::test]
async fn the_pipelines_publisher_is_taken() {
    use pipeline::ports::LiveFeed;
    let events = Events::start("events-publisher").await;
    let mut client = events.connect(&events.ada.access).await;
    let channel = events.ada_channel("j1");
    events
        .subscribe(&mut client, "s", &channel, &events.ada.access)
        .await;
    let aws = sdk_config(&moto_url()).await;
    let publisher =
        pipeline::adapters::AppSyncEvents::new(&aws, format!("http://{}/event", events.host))
            .unwrap();
    let sent = [
        r#"{"text":"Once"}"#.to_owned(),
        r#"{"text":" upon"}"#.to_owned(),
    ];
    publisher.publish(&channel, &sent).await.unwrap();
    for event in &sent {
        assert_eq!(client.next().await, data("s", event));
    }
}

/// As the deployed subscribe handler does, a subscription to one of the subscriber's own
/// unfinished jobs marks it watched (so that its worker publishes its text) before the
/// subscription is confirmed; nothing else marks a job.
#[tokio::test]
async fn a_subscription_to_a_job_marks_it_watched() {
    let stack = Stack::new().await;
    let store = stack.store();
    let events = Events::start_with("events-watch", |api| {
        api.with_on_subscribe(local::events::watch_jobs(store))
    })
    .await;
    let hers = stack.submit(&events.ada.sub, "Watch me").await;
    let his = stack.submit(&events.bob.sub, "Not hers").await;
    let watched = |job: Option<pipeline::domain::Job>| job.unwrap().watched_until;
    assert_eq!(watched(stack.job(&hers).await), None);

    let mut ada = events.connect(&events.ada.access).await;
    let all = format!("/jobs/{}/*", events.ada.sub);
    events
        .subscribe(&mut ada, "all", &all, &events.ada.access)
        .await;
    assert_eq!(
        watched(stack.job(&hers).await),
        None,
        "all her jobs: none marked"
    );
    let before = chrono::Utc::now();
    events
        .subscribe(
            &mut ada,
            "one",
            &events.ada_channel(&hers),
            &events.ada.access,
        )
        .await;
    let until = watched(stack.job(&hers).await).expect("marked before the success came");
    let watch_for = pipeline::domain::WATCH_FOR;
    assert!(
        until >= before + watch_for - chrono::Duration::seconds(1)
            && until <= chrono::Utc::now() + watch_for,
        "watched until {until}"
    );

    // His job, under her name or his, is not hers to mark.
    events
        .subscribe(
            &mut ada,
            "his",
            &events.ada_channel(&his),
            &events.ada.access,
        )
        .await;
    assert_eq!(
        ada.subscribe(
            "x",
            &events.bob_channel(&his),
            &events.ada.access,
            &events.host
        )
        .await,
        subscribe_error("x", unauthorized(OWNER_RULE))
    );
    assert_eq!(watched(stack.job(&his).await), None);
}

/// A subscriber that vanishes and one that stops reading hold up neither the publisher nor
/// the subscriber that reads: the one that vanished is forgotten, the one that stopped is
/// dropped once its queue is full, with a broadcast_error if its socket still takes one.
#[tokio::test]
async fn subscribers_that_vanish_or_stop_reading_hold_up_no_one() {
    const OUTBOX: usize = 16;
    let events = Events::start_with("events-slow", |api| api.with_outbox_capacity(OUTBOX)).await;
    let channel = events.ada_channel("j1");
    let token = &events.ada.access;

    let mut vanished = events.connect(token).await;
    events.subscribe(&mut vanished, "v", &channel, token).await;
    drop(vanished);

    // A reader with a small receive buffer, so that its socket fills soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(events.host.parse().unwrap()).await.unwrap();
    let mut stalled = events
        .open_on(
            stream,
            &["aws-appsync-event-ws", &events.header_protocol(token)],
        )
        .await;
    events
        .subscribe(&mut stalled, "stalled", &channel, token)
        .await;

    let mut reader = events.connect(token).await;
    events.subscribe(&mut reader, "r", &channel, token).await;
    let received = Arc::new(AtomicUsize::new(0));
    let reading = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut events = Vec::new();
            loop {
                let message = reader.next().await;
                if message["type"] == "data" && message["id"] == "r" {
                    events.push(message["event"].as_str().unwrap().to_owned());
                    received.fetch_add(1, Ordering::SeqCst);
                } else {
                    panic!("the reader got {message}");
                }
                if message["event"].as_str().unwrap().contains("\"last\"") {
                    return events;
                }
            }
        })
    };

    let pad = "p".repeat(200 * 1024);
    let mut sent = Vec::new();
    let mut publishes = 0;
    while events.api.subscriptions() > 1 {
        assert!(publishes < 100, "the stalled subscriber was never dropped");
        let batch: Vec<String> = (0..5)
            .map(|i| json!({"n": publishes * 5 + i, "pad": pad}).to_string())
            .collect();
        let batch_refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        assert_published(&events.publish(&channel, &batch_refs).await, 5);
        sent.extend(batch);
        publishes += 1;
        // The reader keeps up: it has everything before the next publish.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while received.load(Ordering::SeqCst) < sent.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reader fell behind"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(events.api.subscriptions(), 1, "only the reader is left");
    let last = json!({"last": true}).to_string();
    assert_published(&events.publish(&channel, &[&last]).await, 1);
    sent.push(last);
    let got = tokio::time::timeout(PATIENCE, reading)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, sent, "the reader got every event, in order");

    // The stalled subscriber, reading at last, finds its events cut short.
    let mut stalled_got = 0;
    loop {
        match stalled.read().await {
            Read::Json(message) if message["type"] == "data" => stalled_got += 1,
            Read::Json(message) if message == json!({"type": "ka"}) => {}
            Read::Json(message) => assert_eq!(
                message,
                json!({
                    "type": "broadcast_error",
                    "id": "stalled",
                    "errors": [{
                        "errorType": "MessageProcessingError",
                        "message": "The connection did not read its events fast enough; they were dropped and the connection is closed.",
                    }],
                })
            ),
            Read::Closed(_) | Read::Broken => break,
        }
    }
    assert!(
        stalled_got < sent.len() - 1,
        "the stalled subscriber got {stalled_got} of {}",
        sent.len()
    );
}

/// End to end: a subscriber to its own job (which marks it watched) gets the worker's text
/// events as the model streams them, and they join to the job's answer, every character once;
/// the job's own text is written in far fewer, larger flushes.
#[tokio::test]
async fn a_watched_jobs_text_reaches_its_subscriber_as_the_worker_streams_it() {
    let stack = Stack::with_words_per_second(40.0).await;
    let store = stack.store();
    let events = Events::start_with("events-end-to-end", |api| {
        api.with_on_subscribe(local::events::watch_jobs(store))
    })
    .await;
    let job = stack
        .submit(
            &events.ada.sub,
            "Tell me about queues and their visibility timeouts",
        )
        .await;
    let mut ada = events.connect(&events.ada.access).await;
    events
        .subscribe(&mut ada, "s", &events.ada_channel(&job), &events.ada.access)
        .await;

    let aws = sdk_config(&moto_url()).await;
    let feed =
        pipeline::adapters::AppSyncEvents::new(&aws, format!("http://{}/event", events.host))
            .unwrap();
    let worker = stack.worker().with_feed(feed);
    let (_, response, _) = stack.deliver_once(&worker).await;
    assert!(response.batch_item_failures.is_empty());
    let answer = stack.text_of(&job).await.unwrap();

    let mut joined = String::new();
    let mut received = 0;
    while joined.len() < answer.len() {
        let message = ada.next().await;
        assert_eq!(
            (&message["type"], &message["id"]),
            (&json!("data"), &json!("s"))
        );
        let event: Value = serde_json::from_str(message["event"].as_str().unwrap()).unwrap();
        assert_eq!(event["type"], "text");
        assert_eq!(event["job_id"], job.as_str());
        assert_eq!(event["attempt"], 1);
        assert_eq!(
            event["offset"].as_u64().unwrap() as usize,
            joined.len(),
            "no gap, no repeat"
        );
        joined.push_str(event["text"].as_str().unwrap());
        received += 1;
    }
    assert_eq!(joined, answer);
    assert!(
        received >= 5,
        "published as it came, not at the end: {received} events"
    );
    ada.assert_quiet().await;
}
