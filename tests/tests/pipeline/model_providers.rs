//! The local model endpoint's OpenAI-compatible provider: Converse requests in, chat
//! completions out, through the worker's unchanged Bedrock client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use integration_tests::*;
use local::converse::{Backend, ConverseServer, Knobs, OpenAiBackend};
use pipeline::adapters::BedrockTextModel;
use pipeline::ports::{ModelError, ModelRequest, TextModel};
use serde_json::{Value, json};

type Seen = Arc<Mutex<Vec<Value>>>;

/// An OpenAI-compatible server that answers "ok" (or fails with `status`) and keeps what it
/// was sent.
async fn chat_server(status: StatusCode) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|State((seen, status)): State<(Seen, StatusCode)>, Json(body): Json<Value>| async move {
                seen.lock().unwrap().push(body);
                let answer = json!({
                    "choices": [{"message": {"role": "assistant", "content": "Queues wait.\nMessages flow."},
                                 "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
                });
                (status, Json(answer))
            }),
        )
        .with_state((seen.clone(), status));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

async fn model_for(openai_url: String) -> (ConverseServer, BedrockTextModel) {
    let backend = Backend::OpenAi(OpenAiBackend {
        base_url: openai_url,
        default_model: "llama3.2".into(),
        model_map: HashMap::from([(OTHER_MODEL.to_owned(), "qwen2.5".to_owned())]),
        api_key: Some("sk-local".into()),
    });
    let server = ConverseServer::start_with(([127, 0, 0, 1], 0).into(), backend, Knobs::default())
        .await
        .unwrap();
    let config = sdk_config(&server.url()).await;
    (server, BedrockTextModel::new(&config))
}

fn request(model: &str) -> ModelRequest {
    ModelRequest {
        model: model.into(),
        prompt: "A haiku about queues".into(),
        system: Some("Be brief.".into()),
        max_tokens: 64,
        temperature: Some(0.5),
    }
}

#[tokio::test]
async fn converse_requests_become_chat_completions_and_back() {
    let (url, seen) = chat_server(StatusCode::OK).await;
    let (_server, model) = model_for(url).await;

    let reply = model.generate(&request(OTHER_MODEL)).await.unwrap();
    assert_eq!(reply.text, "Queues wait.\nMessages flow.");
    assert_eq!(reply.stop_reason, "max_tokens");
    assert_eq!(
        (reply.usage.input_tokens, reply.usage.output_tokens),
        (11, 5)
    );

    model.generate(&request(DEFAULT_MODEL)).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0]["model"], "qwen2.5", "mapped model");
    assert_eq!(seen[1]["model"], "llama3.2", "the default for unmapped ids");
    assert_eq!(
        seen[0]["messages"],
        json!([{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "A haiku about queues"}])
    );
    assert_eq!(seen[0]["max_tokens"], 64);
    assert_eq!(seen[0]["temperature"], 0.5);
}

#[tokio::test]
async fn the_servers_errors_keep_their_meaning() {
    for (status, retryable) in [
        (StatusCode::TOO_MANY_REQUESTS, true),
        (StatusCode::INTERNAL_SERVER_ERROR, true),
        (StatusCode::NOT_FOUND, false),
    ] {
        let (url, _) = chat_server(status).await;
        let (_server, model) = model_for(url).await;
        let error = model.generate(&request(DEFAULT_MODEL)).await.unwrap_err();
        assert_eq!(
            matches!(error, ModelError::Retryable(_)),
            retryable,
            "{status}: {error}"
        );
    }
    // Nobody listening at all: retryable too.
    let (_server, model) = model_for("http://127.0.0.1:9/v1".into()).await;
    let error = model.generate(&request(DEFAULT_MODEL)).await.unwrap_err();
    assert!(matches!(error, ModelError::Retryable(_)), "{error}");
}
