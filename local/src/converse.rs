//! A Bedrock-compatible Converse endpoint: `POST /model/{modelId}/converse` and
//! `POST /model/{modelId}/converse-stream` (the event-stream framing), in the real wire shapes,
//! so that the worker's unchanged `aws-sdk-bedrockruntime` client can talk to it.
//!
//! Behind it, a [`Backend`]: the offline model (deterministic text that says plainly where it
//! comes from and echoes what it was asked, with token counts of that text, written word by
//! word at a set pace), or any OpenAI-compatible `/chat/completions` server (Ollama,
//! llama.cpp, vLLM) for real generations, its streamed chunks passed on as they come.
//! [`Knobs`] add latency, throttling (also mid-stream) and errors at random rates; tests can
//! also script the next calls' faults ([`Fault`]) and read back every request received.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the next call should suffer instead of a plain answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `429 ThrottlingException`: retryable.
    Throttle,
    /// Answer, but throttle (a `throttlingException` in the stream) after this many pieces
    /// of text; not streamed, a `429` after all.
    ThrottleAfter(usize),
    /// `500 InternalServerException`: retryable.
    ServerError,
    /// `400 ValidationException` with this message: permanent.
    Reject(String),
    /// Answer normally, but only after this long.
    Delay(Duration),
    /// Answer only once this many calls with this fault are in flight together (or fail with
    /// `500` after 10 s): proof that a caller runs its requests concurrently.
    Rendezvous(usize),
}

/// One request the endpoint received.
#[derive(Clone, Debug, PartialEq)]
pub struct ConverseCall {
    pub model: String,
    pub body: Value,
}

/// Who writes the answers.
#[derive(Clone, Debug, Default)]
pub enum Backend {
    #[default]
    Offline,
    OpenAi(OpenAiBackend),
}

/// An OpenAI-compatible chat completions server.
#[derive(Clone, Debug)]
pub struct OpenAiBackend {
    /// Up to and including the version, e.g. `http://127.0.0.1:11434/v1` for Ollama.
    pub base_url: String,
    /// The model to use for a Bedrock model id not in `model_map`.
    pub default_model: String,
    /// Bedrock model id → the server's model name.
    pub model_map: HashMap<String, String>,
    pub api_key: Option<String>,
}

/// Faults at random, for trying out retries and failures by hand and for benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Knobs {
    /// Added before every answer.
    pub latency: Duration,
    /// Share of calls (0 to 1) answered with `429 ThrottlingException`.
    pub throttle_rate: f64,
    /// Share of calls (0 to 1) answered with `400 ValidationException`.
    pub error_rate: f64,
    /// The offline model's pace, in words a second (0: all at once).
    pub words_per_second: f64,
}

#[derive(Default)]
struct Shared {
    backend: Backend,
    knobs: Knobs,
    http: reqwest::Client,
    faults: Mutex<VecDeque<Fault>>,
    calls: Mutex<Vec<ConverseCall>>,
    rendezvous: Mutex<Option<Arc<tokio::sync::Barrier>>>,
}

/// The running endpoint; it stops when dropped.
pub struct ConverseServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ConverseServer {
    /// The offline model on `address` (port 0 picks a free one), with no knobs.
    pub async fn start(address: SocketAddr) -> std::io::Result<Self> {
        Self::start_with(address, Backend::Offline, Knobs::default()).await
    }

    pub async fn start_with(
        address: SocketAddr,
        backend: Backend,
        knobs: Knobs,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backend,
            knobs,
            ..Shared::default()
        });
        let app = Router::new()
            .route("/model/{model_id}/converse", post(converse))
            .route("/model/{model_id}/converse-stream", post(converse_stream))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            address,
            shared,
            task,
        })
    }

    /// The base URL to give the Bedrock client as its endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The next call suffers `fault`; several queue up in order.
    pub fn fail_next(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().push_back(fault);
    }

    /// Every request received so far, oldest first.
    pub fn calls(&self) -> Vec<ConverseCall> {
        self.shared.calls.lock().unwrap().clone()
    }
}

impl Drop for ConverseServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The longest the offline model takes to write an answer.
pub const OFFLINE_STREAM_AT_MOST: Duration = Duration::from_secs(5);

/// A piece of an answer as a backend produces it.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    End {
        stop_reason: String,
        input_tokens: usize,
        output_tokens: usize,
    },
}

/// A refusal as Bedrock words it: HTTP status (before the stream), exception type, message.
#[derive(Clone, Debug)]
struct Failure {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn throttled(message: &str) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            message,
        )
    }

    fn response(&self) -> Response {
        error(self.status, self.kind, &self.message)
    }

    /// The same, as an exception message inside an event stream (lower camel case type).
    fn frame(&self) -> Bytes {
        let kind = format!("{}{}", self.kind[..1].to_ascii_lowercase(), &self.kind[1..]);
        event_frame(
            "exception",
            ":exception-type",
            kind,
            &json!({ "message": self.message }),
        )
    }
}

type Pieces = mpsc::Receiver<Result<Piece, Failure>>;

/// `POST /model/{id}/converse`: the whole answer at once.
async fn converse(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let started = Instant::now();
    let mut pieces = match answer(shared, model, body, false).await {
        Ok(pieces) => pieces,
        Err(failure) => return failure.response(),
    };
    let mut text = String::new();
    while let Some(piece) = pieces.recv().await {
        match piece {
            Ok(Piece::Text(delta)) => text.push_str(&delta),
            Ok(Piece::End {
                stop_reason,
                input_tokens,
                output_tokens,
            }) => {
                return Json(json!({
                    "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                    "stopReason": stop_reason,
                    "usage": usage(input_tokens, output_tokens),
                    "metrics": {"latencyMs": started.elapsed().as_millis() as u64},
                }))
                .into_response();
            }
            Err(failure) => return failure.response(),
        }
    }
    Failure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalServerException",
        "The answer ended early.",
    )
    .response()
}

/// `POST /model/{id}/converse-stream`: the answer as it is written, in the event-stream
/// framing (`application/vnd.amazon.eventstream`) that the SDK's `converse_stream` reads.
async fn converse_stream(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let started = Instant::now();
    let pieces = match answer(shared, model, body, true).await {
        Ok(pieces) => pieces,
        Err(failure) => return failure.response(),
    };
    let frames = futures::stream::unfold(
        (pieces, FrameState::Start, started),
        |(mut pieces, state, started)| async move {
            let (frame, next) = match state {
                FrameState::Start => (
                    event("messageStart", &json!({"role": "assistant"})),
                    FrameState::Body,
                ),
                FrameState::Body => match pieces.recv().await {
                    Some(Ok(Piece::Text(delta))) => (
                        event(
                            "contentBlockDelta",
                            &json!({"contentBlockIndex": 0, "delta": {"text": delta}}),
                        ),
                        FrameState::Body,
                    ),
                    Some(Ok(Piece::End {
                        stop_reason,
                        input_tokens,
                        output_tokens,
                    })) => {
                        let mut frames =
                            event("contentBlockStop", &json!({"contentBlockIndex": 0})).to_vec();
                        frames.extend_from_slice(&event(
                            "messageStop",
                            &json!({"stopReason": stop_reason}),
                        ));
                        frames.extend_from_slice(&event(
                            "metadata",
                            &json!({
                                "usage": usage(input_tokens, output_tokens),
                                "metrics": {"latencyMs": started.elapsed().as_millis() as u64},
                            }),
                        ));
                        (Bytes::from(frames), FrameState::Done)
                    }
                    Some(Err(failure)) => (failure.frame(), FrameState::Done),
                    None => return None,
                },
                FrameState::Done => return None,
            };
            Some((Ok::<_, std::io::Error>(frame), (pieces, next, started)))
        },
    );
    Response::builder()
        .header("content-type", "application/vnd.amazon.eventstream")
        .body(Body::from_stream(frames))
        .expect("a valid response")
}

enum FrameState {
    Start,
    Body,
    Done,
}

fn usage(input_tokens: usize, output_tokens: usize) -> Value {
    json!({
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens,
    })
}

fn event(event_type: &'static str, payload: &Value) -> Bytes {
    event_frame("event", ":event-type", event_type.to_owned(), payload)
}

/// One event-stream message: its type headers and a JSON payload.
fn event_frame(
    message_type: &'static str,
    type_header: &'static str,
    kind: String,
    payload: &Value,
) -> Bytes {
    let message = Message::new(serde_json::to_vec(payload).expect("JSON"))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(message_type.into()),
        ))
        .add_header(Header::new(type_header, HeaderValue::String(kind.into())))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut buffer = Vec::new();
    write_message_to(&message, &mut buffer).expect("an encodable message");
    Bytes::from(buffer)
}

/// Starts answering: the faults that strike before any text (as an `Err`), then the pieces
/// of the answer from the backend. With `streaming`, a throttle may also strike after some
/// text, as Bedrock's `throttlingException` inside a stream does.
async fn answer(
    shared: Arc<Shared>,
    model: String,
    body: Value,
    streaming: bool,
) -> Result<Pieces, Failure> {
    shared.calls.lock().unwrap().push(ConverseCall {
        model: model.clone(),
        body: body.clone(),
    });
    let fault = shared.faults.lock().unwrap().pop_front();
    let mut throttle_after = None;
    match fault {
        Some(Fault::Throttle) => {
            return Err(Failure::throttled(
                "Too many requests, please wait before trying again.",
            ));
        }
        Some(Fault::ThrottleAfter(chunks)) => throttle_after = Some(chunks),
        Some(Fault::ServerError) => {
            return Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
                "The server encountered an internal error.",
            ));
        }
        Some(Fault::Reject(message)) => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                message,
            ));
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Rendezvous(peers)) => {
            let barrier = shared
                .rendezvous
                .lock()
                .unwrap()
                .get_or_insert_with(|| Arc::new(tokio::sync::Barrier::new(peers)))
                .clone();
            if tokio::time::timeout(Duration::from_secs(10), barrier.wait())
                .await
                .is_err()
            {
                return Err(Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerException",
                    "The other calls of the rendezvous never came.",
                ));
            }
        }
        None => {}
    }
    let knobs = shared.knobs;
    tokio::time::sleep(knobs.latency).await;
    if fastrand::f64() < knobs.throttle_rate {
        // Streamed, half of the throttles strike after some text.
        match streaming && fastrand::bool() {
            true => throttle_after = Some(fastrand::usize(1..8)),
            false => {
                return Err(Failure::throttled(
                    "Too many requests (throttling injected by --throttle-rate).",
                ));
            }
        }
    }
    if fastrand::f64() < knobs.error_rate {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "The request was refused (an error injected by --error-rate).",
        ));
    }
    let (sender, mut pieces) = mpsc::channel(16);
    match &shared.backend {
        Backend::Offline => {
            let reply = offline_reply(&model, &body);
            let pace = knobs.words_per_second;
            tokio::spawn(stream_offline(reply, pace, sender));
        }
        Backend::OpenAi(backend) => {
            let upstream = openai_request(&shared.http, backend, &model, &body).await?;
            tokio::spawn(stream_openai(upstream, sender));
        }
    }
    let Some(chunks) = throttle_after else {
        return Ok(pieces);
    };
    // Pass on `chunks` pieces of text, then the throttle.
    let (sender, throttled) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut passed = 0;
        while let Some(piece) = pieces.recv().await {
            if passed == chunks || matches!(piece, Ok(Piece::End { .. })) {
                let failure = Failure::throttled("Too many requests (throttled mid-stream).");
                let _ = sender.send(Err(failure)).await;
                return;
            }
            passed += 1;
            if sender.send(piece).await.is_err() {
                return;
            }
        }
    });
    Ok(throttled)
}

/// The offline model's answer word by word, `words_per_second` (0: all at once, at full
/// speed), faster for a long answer: it never takes more than [`OFFLINE_STREAM_AT_MOST`], so
/// that an echoed long prompt stays well within a local worker invocation.
async fn stream_offline(
    reply: Reply,
    words_per_second: f64,
    sender: mpsc::Sender<Result<Piece, Failure>>,
) {
    let words = reply.text.split_inclusive(' ').count().max(1) as f64;
    let pause = (words_per_second > 0.0).then(|| {
        Duration::from_secs_f64(1.0 / words_per_second).min(OFFLINE_STREAM_AT_MOST.div_f64(words))
    });
    for word in reply.text.split_inclusive(' ') {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        if sender.send(Ok(Piece::Text(word.to_owned()))).await.is_err() {
            return; // the caller hung up: stop writing
        }
    }
    let end = Piece::End {
        stop_reason: reply.stop_reason,
        input_tokens: reply.input_tokens,
        output_tokens: reply.output_tokens,
    };
    let _ = sender.send(Ok(end)).await;
}

/// Sends the request to an OpenAI-compatible server, streamed, and translates a refusal
/// into Converse terms.
async fn openai_request(
    http: &reqwest::Client,
    backend: &OpenAiBackend,
    model: &str,
    body: &Value,
) -> Result<reqwest::Response, Failure> {
    let (prompt, system) = request_texts(body);
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": prompt}));
    let name = backend
        .model_map
        .get(model)
        .unwrap_or(&backend.default_model);
    let mut request = json!({
        "model": name,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(max_tokens) = body.pointer("/inferenceConfig/maxTokens") {
        request["max_tokens"] = max_tokens.clone();
    }
    if let Some(temperature) = body.pointer("/inferenceConfig/temperature") {
        request["temperature"] = temperature.clone();
    }
    let url = format!(
        "{}/chat/completions",
        backend.base_url.trim_end_matches('/')
    );
    let mut call = http.post(&url).json(&request);
    if let Some(key) = &backend.api_key {
        call = call.bearer_auth(key);
    }
    let unavailable = |detail: String| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            format!("The OpenAI-compatible server at {url} did not answer: {detail}"),
        )
    };
    let answer = call.send().await.map_err(|e| unavailable(e.to_string()))?;
    let status = answer.status().as_u16();
    if status < 400 {
        return Ok(answer);
    }
    let text = answer.text().await.unwrap_or_default();
    Err(match status {
        429 => Failure::throttled(&text),
        500.. => unavailable(format!("HTTP {status}: {text}")),
        _ => Failure::new(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            format!("The model server refused the request (HTTP {status}): {text}"),
        ),
    })
}

/// Reads the server's server-sent events (`data: {chunk}` lines, `data: [DONE]` at the end)
/// and passes each piece of text on as it comes.
async fn stream_openai(
    mut upstream: reqwest::Response,
    sender: mpsc::Sender<Result<Piece, Failure>>,
) {
    let mut buffer = String::new();
    let mut stop_reason = "end_turn";
    let (mut input_tokens, mut output_tokens, mut words) = (None, None, 0);
    let broken = |detail: String| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            format!("The OpenAI-compatible server's stream broke: {detail}"),
        )
    };
    loop {
        // A caller that hung up ends the upstream request at once (dropping it stops the
        // server's generation), even while the server sends nothing to pass on.
        let next = tokio::select! {
            next = upstream.chunk() => next,
            () = sender.closed() => return,
        };
        let chunk = match next {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                let _ = sender.send(Err(broken(error.to_string()))).await;
                return;
            }
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            let Some(data) = line.trim().strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                let _ = sender
                    .send(Err(broken(format!("unreadable chunk {data:?}"))))
                    .await;
                return;
            };
            let choice = &event["choices"][0];
            if let Some(delta) = choice["delta"]["content"]
                .as_str()
                .filter(|d| !d.is_empty())
            {
                words += delta.split_whitespace().count();
                if sender
                    .send(Ok(Piece::Text(delta.to_owned())))
                    .await
                    .is_err()
                {
                    return; // the caller hung up: dropping `upstream` stops the server
                }
            }
            match choice["finish_reason"].as_str() {
                Some("length") => stop_reason = "max_tokens",
                Some("content_filter") => stop_reason = "content_filtered",
                _ => {}
            }
            if let Some(usage) = event.get("usage").filter(|usage| usage.is_object()) {
                input_tokens = usage["prompt_tokens"].as_u64().map(|n| n as usize);
                output_tokens = usage["completion_tokens"].as_u64().map(|n| n as usize);
            }
        }
    }
    // A server that reports no usage: count words, as the offline model does.
    let end = Piece::End {
        stop_reason: stop_reason.to_owned(),
        input_tokens: input_tokens.unwrap_or(0),
        output_tokens: output_tokens.unwrap_or(words),
    };
    let _ = sender.send(Ok(end)).await;
}

/// An AWS JSON error as Bedrock sends it: the type in `x-amzn-ErrorType`, the text in `message`.
fn error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    (
        status,
        [("x-amzn-ErrorType", kind)],
        Json(json!({ "message": message })),
    )
        .into_response()
}

/// The text of the offline model and its token counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub stop_reason: String,
    pub input_tokens: usize,
    pub output_tokens: usize,
}

/// The words of the last user message and of the system prompt, as the request sent them.
fn request_texts(body: &Value) -> (String, String) {
    let texts = |blocks: Option<&Value>| -> String {
        blocks
            .and_then(Value::as_array)
            .map(|blocks| {
                blocks
                    .iter()
                    .filter_map(|block| block.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    let prompt = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        })
        .map(|message| texts(message.get("content")))
        .unwrap_or_default();
    (prompt, texts(body.get("system")))
}

/// Deterministic: the same request always gets the same answer. A "token" here is a
/// whitespace-separated word, counted honestly on both sides; `maxTokens` cuts the answer.
pub fn offline_reply(model: &str, body: &Value) -> Reply {
    let (prompt, system) = request_texts(body);
    let max_tokens = body
        .pointer("/inferenceConfig/maxTokens")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX) as usize;
    let full = format!(
        "This answer comes from the offline model standing in for {model}; no real model was called. You asked: {prompt}"
    );
    let words: Vec<&str> = full.split_whitespace().collect();
    let (text, stop_reason) = if words.len() > max_tokens {
        (words[..max_tokens].join(" "), "max_tokens".to_owned())
    } else {
        (full.clone(), "end_turn".to_owned())
    };
    Reply {
        output_tokens: text.split_whitespace().count(),
        input_tokens: prompt.split_whitespace().count() + system.split_whitespace().count(),
        text,
        stop_reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str, max_tokens: u64) -> Value {
        json!({
            "messages": [{"role": "user", "content": [{"text": prompt}]}],
            "system": [{"text": "be brief"}],
            "inferenceConfig": {"maxTokens": max_tokens},
        })
    }

    #[test]
    fn the_offline_model_echoes_and_counts_words() {
        let reply = offline_reply("m-1", &request("what is rust", 512));
        assert!(
            reply
                .text
                .starts_with("This answer comes from the offline model standing in for m-1")
        );
        assert!(reply.text.ends_with("You asked: what is rust"));
        assert_eq!(reply.stop_reason, "end_turn");
        assert_eq!(reply.input_tokens, 3 + 2);
        assert_eq!(reply.output_tokens, reply.text.split_whitespace().count());
        assert_eq!(reply, offline_reply("m-1", &request("what is rust", 512)));
    }

    #[test]
    fn max_tokens_cuts_the_answer() {
        let reply = offline_reply("m", &request("hi", 4));
        assert_eq!(reply.text, "This answer comes from");
        assert_eq!(reply.output_tokens, 4);
        assert_eq!(reply.stop_reason, "max_tokens");
    }
}
