//! Live output against moto and the local endpoint's event stream: the text reaches the
//! record as the model writes it, a long-poll answers at each change, a cancellation stops the
//! stream and keeps its text, and `Prefer: wait` makes one request enough.

use std::time::{Duration, Instant};

use aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use aws_lambda_events::http::{HeaderValue, Method};
use integration_tests::*;
use serde_json::Value;
use tokio::sync::watch;

const USER: &str = "user-live";

async fn get(stack: &Stack, path: &str) -> ApiGatewayV2httpResponse {
    stack
        .status()
        .handle(request(Method::GET, path, Some(USER), None))
        .await
}

/// The worker, run by the event source loop, until the returned sender says stop.
fn run_worker(stack: &Stack) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let worker = stack.worker();
    let events = stack.events.clone();
    let running = tokio::spawn(async move {
        local::worker_loop::run(&events, &worker, Duration::from_secs(30), stopped).await;
    });
    (stop, running)
}

/// Follows the job with long-polls, as the web UI does, and returns every state seen.
async fn follow(stack: &Stack, job_id: &str) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    let mut after = -1;
    loop {
        let response = get(stack, &format!("/jobs/{job_id}?wait=10&after={after}")).await;
        assert_eq!(response.status_code, 200, "{:?}", response.body);
        let job = json_body(&response);
        after = job["seq"].as_i64().unwrap();
        let finished = !["queued", "running"].contains(&job["status"].as_str().unwrap());
        seen.push(job);
        if finished {
            return seen;
        }
        assert!(seen.len() < 500, "the job never finished");
    }
}

#[tokio::test]
async fn the_text_reaches_the_record_and_the_long_poll_as_it_is_written() {
    // About two seconds of writing: time for several flushes and long-polls even on a busy
    // machine.
    let stack = Stack::with_words_per_second(20.0).await;
    let (stop, running) = run_worker(&stack);
    let job_id = stack
        .submit(
            USER,
            "Tell me about streams, flushes, long-polls and why they fit.",
        )
        .await;

    let seen = follow(&stack, &job_id).await;
    stop.send(true).unwrap();
    running.await.unwrap();

    let last = seen.last().unwrap();
    assert_eq!(last["status"], "succeeded");
    let full = last["output"].as_str().unwrap();
    let growing: Vec<&str> = seen
        .iter()
        .filter(|job| job["status"] == "running")
        .filter_map(|job| job["output"].as_str())
        .collect();
    assert!(
        growing.len() >= 3,
        "the text showed while it was written: {growing:?}"
    );
    assert!(
        growing
            .windows(2)
            .all(|pair| pair[1].len() > pair[0].len() && pair[1].starts_with(pair[0])),
        "each answer had more of it: {growing:?}"
    );
    assert!(full.starts_with(growing.last().unwrap()));
    let seqs: Vec<i64> = seen
        .iter()
        .map(|job| job["seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|pair| pair[1] > pair[0]),
        "each long-poll answered a change: {seqs:?}"
    );
}

#[tokio::test]
async fn a_long_poll_answers_at_a_change_or_at_the_end_of_its_wait() {
    let stack = Stack::new().await;
    let job_id = stack.submit(USER, "nobody works on this").await;
    let job = json_body(&get(&stack, &format!("/jobs/{job_id}")).await);
    let seq = job["seq"].as_i64().unwrap();

    // Nothing changes: the job as it is, once the wait is over.
    let started = Instant::now();
    let response = get(&stack, &format!("/jobs/{job_id}?wait=1&after={seq}")).await;
    assert_eq!(response.status_code, 200);
    assert_eq!(json_body(&response)["seq"], seq);
    assert!(started.elapsed() >= Duration::from_secs(1));

    // Already past `after`: at once.
    let response = get(&stack, &format!("/jobs/{job_id}?wait=20&after={}", seq - 1)).await;
    assert_eq!(json_body(&response)["seq"], seq);

    // A change while it waits: answered then, long before the wait is over.
    let status = stack.status();
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = format!("/jobs/{job_id}/cancel");
        status
            .handle(request(Method::POST, &path, Some(USER), None))
            .await
    };
    let started = Instant::now();
    let path = format!("/jobs/{job_id}?wait=20&after={seq}");
    let waiting = get(&stack, &path);
    let (response, cancelled) = tokio::join!(waiting, cancel);
    assert_eq!(cancelled.status_code, 200);
    let job = json_body(&response);
    assert_eq!(job["status"], "cancelled");
    assert!(job["seq"].as_i64().unwrap() > seq);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    // Someone else's job: 404 at once, whatever the wait.
    let foreign = stack
        .status()
        .handle(request(
            Method::GET,
            &format!("/jobs/{job_id}?wait=20"),
            Some("someone-else"),
            None,
        ))
        .await;
    assert_error(&foreign, 404, "not_found");
}

#[tokio::test]
async fn bad_wait_and_after_values_are_400() {
    let stack = Stack::new().await;
    let job_id = stack.submit(USER, "hi").await;
    for (query, named) in [
        ("wait=21", "wait"),
        ("wait=-1", "wait"),
        ("wait=1.5", "wait"),
        ("wait=soon", "wait"),
        ("after=-2", "after"),
        ("after=x", "after"),
        ("wait=5&after=", "after"),
    ] {
        let response = get(&stack, &format!("/jobs/{job_id}?{query}")).await;
        let message = assert_error(&response, 400, "invalid_request");
        assert!(message.contains(named), "{query}: {message}");
    }
}

#[tokio::test]
async fn a_cancellation_mid_stream_stops_it_and_keeps_the_text() {
    let stack = Stack::with_words_per_second(20.0).await;
    let (stop, running) = run_worker(&stack);
    let prompt = "a long answer please ".repeat(30);
    let job_id = stack.submit(USER, &prompt).await;

    // Once some text has come, the owner stops the job.
    let mut after = -1;
    let partial = loop {
        let job = json_body(&get(&stack, &format!("/jobs/{job_id}?wait=10&after={after}")).await);
        after = job["seq"].as_i64().unwrap();
        if let Some(output) = job["output"]
            .as_str()
            .filter(|_| job["status"] == "running")
        {
            break output.to_owned();
        }
    };
    let cancelled = stack
        .status()
        .handle(request(
            Method::POST,
            &format!("/jobs/{job_id}/cancel"),
            Some(USER),
            None,
        ))
        .await;
    assert_eq!(cancelled.status_code, 200);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.send(true).unwrap();
    running.await.unwrap();

    let job = json_body(&get(&stack, &format!("/jobs/{job_id}")).await);
    assert_eq!(job["status"], "cancelled");
    let kept = job["output"].as_str().expect("the partial text is kept");
    assert!(kept.starts_with(&partial), "{kept:?} after {partial:?}");
    let full = local::converse::offline_reply(
        DEFAULT_MODEL,
        &serde_json::json!({"messages": [{"role": "user", "content": [{"text": prompt.trim()}]}]}),
    )
    .text;
    assert!(
        kept.len() < full.len() / 2,
        "the stream stopped soon after the cancellation: {} of {} characters",
        kept.len(),
        full.len()
    );
    assert_eq!(
        stack.artifact_count().await,
        0,
        "no artifact for a cancelled job"
    );
    assert!(job.get("artifact").is_none() && job.get("usage").is_none());
}

async fn submit_waiting(stack: &Stack, prefer: &str, prompt: &str) -> ApiGatewayV2httpResponse {
    let body = serde_json::json!({ "prompt": prompt }).to_string();
    let mut event = request(Method::POST, "/generate", Some(USER), Some(&body));
    event
        .headers
        .insert("prefer", HeaderValue::from_str(prefer).unwrap());
    stack.api().handle(event).await
}

#[tokio::test]
async fn prefer_wait_answers_with_the_finished_job_in_one_request() {
    let stack = Stack::new().await;
    let (stop, running) = run_worker(&stack);

    let response = submit_waiting(&stack, "wait=10", "One request").await;
    assert_eq!(response.status_code, 200, "{:?}", response.body);
    assert_eq!(
        response.headers["preference-applied"], "wait=10",
        "the preference was honoured"
    );
    let job = json_body(&response);
    assert_eq!(job["status"], "succeeded");
    assert!(
        job["output"]
            .as_str()
            .unwrap()
            .ends_with("You asked: One request")
    );
    assert_eq!(
        response.headers["location"],
        format!("/jobs/{}", job["job_id"].as_str().unwrap())
    );
    let polled = json_body(
        &get(
            &stack,
            &format!("/jobs/{}", job["job_id"].as_str().unwrap()),
        )
        .await,
    );
    assert_eq!(job, polled, "the same job object as GET /jobs/{{id}}");

    // More than the most is the most; among other preferences it is still found.
    let response = submit_waiting(&stack, "respond-async, wait=600", "Capped").await;
    assert_eq!(response.status_code, 200);
    assert_eq!(response.headers["preference-applied"], "wait=25");

    stop.send(true).unwrap();
    running.await.unwrap();

    // Nobody works on it: after the wait, the usual 202.
    let started = Instant::now();
    let response = submit_waiting(&stack, "wait=1", "Too slow").await;
    assert_eq!(response.status_code, 202);
    assert!(response.headers.get("preference-applied").is_none());
    assert!(started.elapsed() >= Duration::from_secs(1));

    // A preference that cannot be honoured is ignored, as RFC 7240 says: 202 at once.
    for prefer in ["wait=soon", "wait=0", "handling=strict"] {
        let response = submit_waiting(&stack, prefer, prefer).await;
        assert_eq!(response.status_code, 202, "{prefer}");
        assert!(
            response.headers.get("preference-applied").is_none(),
            "{prefer}"
        );
    }
}

/// A subscription marks the owner's unfinished job watched without changing it (its `seq`
/// and `updated_at` stay, so no long-poll wakes and the sweep's clock runs on); an attempt
/// learns of it when it starts and at each flush. Nobody else's job, and no finished job, is
/// marked.
#[tokio::test]
async fn a_watch_marks_only_the_owners_unfinished_job_and_the_attempt_sees_it() {
    use pipeline::domain::{JobId, Lease, Owner, TextPiece, Transition, Transitioned};
    use pipeline::ports::{Flushed, JobStore};

    let stack = Stack::new().await;
    let store = stack.store();
    let id = JobId::parse(&stack.submit(USER, "watch me").await).unwrap();
    let before = stack.job(&id.to_string()).await.unwrap();
    let until = chrono::Utc::now() + pipeline::domain::WATCH_FOR;

    assert!(
        !store
            .watch(id, &Owner::new("someone-else"), until)
            .await
            .unwrap()
    );
    assert!(
        !store
            .watch(JobId::random(), &Owner::new(USER), until)
            .await
            .unwrap()
    );
    assert!(store.watch(id, &Owner::new(USER), until).await.unwrap());
    let watched = stack.job(&id.to_string()).await.unwrap();
    assert_eq!(
        (watched.seq, watched.updated_at),
        (before.seq, before.updated_at),
        "not a change of the job"
    );
    assert_eq!(
        watched.watched_until.map(|at| at.timestamp_millis()),
        Some(until.timestamp_millis())
    );

    let lease = Lease::new(chrono::Utc::now() + chrono::Duration::seconds(60));
    let start = Transition::Start {
        lease: lease.clone(),
        max_attempts: MAX_ATTEMPTS,
    };
    let Transitioned::Done(started) = store
        .transition(id, &start, chrono::Utc::now())
        .await
        .unwrap()
    else {
        panic!("the start was refused");
    };
    assert_eq!(
        started.watched_until, watched.watched_until,
        "the attempt sees it"
    );
    let piece = TextPiece::whole(&started, "Once");
    let flushed = store
        .flush(id, &lease.id, &piece, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(
        flushed,
        Flushed::Kept {
            watched_until: watched.watched_until
        }
    );

    let cancel = Transition::Cancel { running: true };
    store
        .transition(id, &cancel, chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        !store.watch(id, &Owner::new(USER), until).await.unwrap(),
        "a finished job is not marked"
    );
}
