//! The local model endpoint through the worker's unchanged Bedrock client (`converse_stream`,
//! event-stream framing): the offline model's words as they are written, a throttle
//! mid-stream, and the OpenAI-compatible provider (Converse requests in, streamed chat
//! completions out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use futures::StreamExt;
use integration_tests::*;
use local::converse::Fault;
use local::converse::{Backend, ConverseServer, Knobs, OpenAiBackend};
use pipeline::adapters::BedrockTextModel;
use pipeline::ports::{ModelError, ModelRequest, Progress, TextModel};
use serde_json::{Value, json};

type Seen = Arc<Mutex<Vec<Value>>>;

/// An OpenAI-compatible server that streams its answer as server-sent events, 50 ms apart
/// (or fails with `status`), and keeps what it was sent.
async fn chat_server(status: StatusCode) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(|State((seen, status)): State<(Seen, StatusCode)>, Json(body): Json<Value>| async move {
                seen.lock().unwrap().push(body);
                if status != StatusCode::OK {
                    return (status, "no").into_response();
                }
                let events = [
                    json!({"choices": [{"delta": {"role": "assistant", "content": "Queues "}, "finish_reason": null}]}),
                    json!({"choices": [{"delta": {"content": "wait.\nMessages"}, "finish_reason": null}]}),
                    json!({"choices": [{"delta": {"content": " flow."}, "finish_reason": "length"}]}),
                    json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}}),
                ]
                .map(|event| format!("data: {event}\n\n"))
                .into_iter()
                .chain(["data: [DONE]\n\n".to_owned()]);
                let paced = futures::stream::iter(events).then(|event| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(event)
                });
                ([("content-type", "text/event-stream")], axum::body::Body::from_stream(paced))
                    .into_response()
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

    let (reply, seen_growing) = generate_watching(&model, OTHER_MODEL).await;
    assert_eq!(reply.text, "Queues wait.\nMessages flow.");
    assert_eq!(
        seen_growing,
        [
            "Queues ",
            "Queues wait.\nMessages",
            "Queues wait.\nMessages flow."
        ],
        "each chunk arrives as the server sends it"
    );
    assert_eq!(reply.stop_reason, "max_tokens");
    assert_eq!(
        (reply.usage.input_tokens, reply.usage.output_tokens),
        (11, 5)
    );

    model
        .generate(&request(DEFAULT_MODEL), &Progress::channel().0)
        .await
        .unwrap();
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
    assert_eq!(seen[0]["stream"], true);
}

/// A call to `model_id` that succeeds, and every value its text took as it streamed.
async fn generate_watching(
    model: &BedrockTextModel,
    model_id: &str,
) -> (pipeline::ports::ModelReply, Vec<String>) {
    let (progress, mut text) = Progress::channel();
    let growth = tokio::spawn(async move {
        let mut values = Vec::new();
        while text.changed().await.is_ok() {
            values.push(text.borrow_and_update().clone());
        }
        values
    });
    let reply = model.generate(&request(model_id), &progress).await.unwrap();
    drop(progress);
    (reply, growth.await.unwrap())
}

/// The offline model writes word by word at its pace; the SDK's `converse_stream` reads the
/// event-stream framing unchanged.
#[tokio::test]
async fn the_offline_model_streams_word_by_word() {
    let knobs = Knobs {
        words_per_second: 200.0,
        ..Knobs::default()
    };
    let server = ConverseServer::start_with(([127, 0, 0, 1], 0).into(), Backend::Offline, knobs)
        .await
        .unwrap();
    let model = BedrockTextModel::new(&sdk_config(&server.url()).await);
    let (reply, values) = generate_watching(&model, DEFAULT_MODEL).await;
    let words = reply.text.split_whitespace().count();
    assert!(words > 10, "{}", reply.text);
    assert_eq!(values.len(), words, "one piece a word: {values:?}");
    assert!(
        values.windows(2).all(|pair| pair[1].starts_with(&pair[0])),
        "it only grows"
    );
    assert_eq!(values.last(), Some(&reply.text));
    assert_eq!(reply.stop_reason, "end_turn");
    assert_eq!(reply.usage.output_tokens, words as u64);
    assert_eq!(reply.usage.input_tokens, 4 + 2, "prompt and system words");
}

/// A throttling exception in the middle of the stream is a retryable failure, after the text
/// that came before it.
#[tokio::test]
async fn a_throttle_mid_stream_is_retryable_after_some_text() {
    let server = ConverseServer::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    server.fail_next(Fault::ThrottleAfter(3));
    let model = BedrockTextModel::new(&sdk_config(&server.url()).await);
    let (progress, text) = Progress::channel();
    let error = model
        .generate(&request(DEFAULT_MODEL), &progress)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ModelError::Retryable(message) if message.contains("mid-stream")),
        "{error:?}"
    );
    assert_eq!(
        text.borrow().split_whitespace().count(),
        3,
        "three words came first"
    );

    // Not streamed, the same fault is a plain 429 (the `converse` route).
    let converse = || async {
        reqwest::Client::new()
            .post(format!("{}/model/{DEFAULT_MODEL}/converse", server.url()))
            .json(&json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}))
            .send()
            .await
            .unwrap()
    };
    server.fail_next(Fault::ThrottleAfter(3));
    assert_eq!(converse().await.status(), 429);
    let body: Value = converse().await.json().await.unwrap();
    assert!(
        body["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .ends_with("You asked: hi")
    );
    assert_eq!(body["stopReason"], "end_turn");
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
        let error = model
            .generate(&request(DEFAULT_MODEL), &Progress::channel().0)
            .await
            .unwrap_err();
        assert_eq!(
            matches!(error, ModelError::Retryable(_)),
            retryable,
            "{status}: {error}"
        );
    }
    // Nobody listening at all: retryable too.
    let (_server, model) = model_for("http://127.0.0.1:9/v1".into()).await;
    let error = model
        .generate(&request(DEFAULT_MODEL), &Progress::channel().0)
        .await
        .unwrap_err();
    assert!(matches!(error, ModelError::Retryable(_)), "{error}");
}

/// A caller that hangs up ends the request to the OpenAI-compatible server, even while the
/// server has written nothing yet (a model thinking): no generation runs on for nobody.
#[tokio::test]
async fn a_caller_that_hangs_up_ends_the_servers_generation() {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Set when the server's response is dropped: its client went away.
    struct Ended(Arc<AtomicBool>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let flag = flag.clone();
            async move {
                // Headers at once, then silence for a minute.
                let silent = futures::stream::once(async move {
                    let _ended = Ended(flag);
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    Ok::<_, std::io::Error>("data: [DONE]\n\n")
                });
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(silent),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (_server, model) = model_for(url).await;

    let (asked, progress) = (request(DEFAULT_MODEL), Progress::channel().0);
    let call = model.generate(&asked, &progress);
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(500), call).await;
    assert!(gave_up.is_err(), "the server wrote nothing");
    for _ in 0..50 {
        if ended.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the server's generation ran on after its caller hung up");
}
