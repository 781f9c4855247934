//! A Bedrock-compatible Converse endpoint: `POST /model/{modelId}/converse`, in the real wire
//! shape, so that the worker's unchanged `aws-sdk-bedrockruntime` client can talk to it.
//!
//! It answers with the offline model: instant, deterministic text that says plainly where it
//! comes from and echoes what it was asked, with token counts of that text. Tests can make the
//! next calls fail ([`Fault`]) and read back every request it received.

use std::collections::VecDeque;
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

#[derive(Default)]
struct Shared {
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
    /// Serves on `address` (port 0 picks a free one).
    pub async fn start(address: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
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
    let reply = offline_reply(&model, &body);
    let latency_ms = started.elapsed().as_millis() as u64;
    Json(reply.to_converse_output(latency_ms)).into_response()
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
    pub stop_reason: &'static str,
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
        (words[..max_tokens].join(" "), "max_tokens")
    } else {
        (full.clone(), "end_turn")
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
