//! A Bedrock-compatible Converse endpoint: `POST /model/{modelId}/converse`, in the real wire
//! shape, so that the worker's unchanged `aws-sdk-bedrockruntime` client can talk to it.
//!
//! Behind it, a [`Backend`]: the offline model (instant, deterministic text that says plainly
//! where it comes from and echoes what it was asked, with token counts of that text), or any
//! OpenAI-compatible `/chat/completions` server (Ollama, llama.cpp, vLLM) for real generations.
//! [`Knobs`] add latency, throttling and errors at random rates; tests can also script the
//! next calls' faults ([`Fault`]) and read back every request received.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the next call should suffer instead of a plain answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `429 ThrottlingException`: retryable.
    Throttle,
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

async fn converse(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let started = Instant::now();
    shared.calls.lock().unwrap().push(ConverseCall {
        model: model.clone(),
        body: body.clone(),
    });
    let fault = shared.faults.lock().unwrap().pop_front();
    match fault {
        Some(Fault::Throttle) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
            );
        }
        Some(Fault::ServerError) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerException",
                "The server encountered an internal error.",
            );
        }
        Some(Fault::Reject(message)) => {
            return error(StatusCode::BAD_REQUEST, "ValidationException", &message);
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
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerException",
                    "The other calls of the rendezvous never came.",
                );
            }
        }
        None => {}
    }
    let knobs = shared.knobs;
    tokio::time::sleep(knobs.latency).await;
    if fastrand::f64() < knobs.throttle_rate {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            "Too many requests (throttling injected by --throttle-rate).",
        );
    }
    if fastrand::f64() < knobs.error_rate {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "The request was refused (an error injected by --error-rate).",
        );
    }
    let reply = match &shared.backend {
        Backend::Offline => offline_reply(&model, &body),
        Backend::OpenAi(backend) => {
            match openai_reply(&shared.http, backend, &model, &body).await {
                Ok(reply) => reply,
                Err(response) => return response,
            }
        }
    };
    let latency_ms = started.elapsed().as_millis() as u64;
    Json(reply.to_converse_output(latency_ms)).into_response()
}

/// Forwards the request to an OpenAI-compatible server and translates its answer (and its
/// errors) into Converse terms.
async fn openai_reply(
    http: &reqwest::Client,
    backend: &OpenAiBackend,
    model: &str,
    body: &Value,
) -> Result<Reply, Response> {
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
    let mut request = json!({"model": name, "messages": messages, "stream": false});
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
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            &format!("The OpenAI-compatible server at {url} did not answer: {detail}"),
        )
    };
    let answer = call.send().await.map_err(|e| unavailable(e.to_string()))?;
    let status = answer.status().as_u16();
    let text = answer
        .text()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if status == 429 {
        return Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            &text,
        ));
    }
    if status >= 500 {
        return Err(unavailable(format!("HTTP {status}: {text}")));
    }
    if status >= 400 {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            &format!("The model server refused the request (HTTP {status}): {text}"),
        ));
    }
    let completion: Value =
        serde_json::from_str(&text).map_err(|e| unavailable(format!("unreadable answer ({e})")))?;
    let choice = &completion["choices"][0];
    let stop_reason = match choice["finish_reason"].as_str() {
        Some("length") => "max_tokens",
        Some("content_filter") => "content_filtered",
        _ => "end_turn",
    };
    Ok(Reply {
        text: choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        stop_reason: stop_reason.to_owned(),
        input_tokens: completion["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
        output_tokens: completion["usage"]["completion_tokens"]
            .as_u64()
            .unwrap_or(0) as usize,
    })
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

impl Reply {
    fn to_converse_output(&self, latency_ms: u64) -> Value {
        json!({
            "output": {"message": {"role": "assistant", "content": [{"text": self.text}]}},
            "stopReason": self.stop_reason,
            "usage": {
                "inputTokens": self.input_tokens,
                "outputTokens": self.output_tokens,
                "totalTokens": self.input_tokens + self.output_tokens,
            },
            "metrics": {"latencyMs": latency_ms},
        })
    }
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
