//! `local-stack`: the whole pipeline on this machine, with no AWS account.
//!
//! It starts the AWS emulator (moto) and creates the table, queues, bucket and Cognito user
//! pool as the template does, starts a Bedrock-compatible model endpoint, runs the worker as
//! the SQS event source would, and serves the web UI and the API on one port, verifying
//! Cognito tokens as API Gateway's authorizer does. The functions' own code runs underneath,
//! through the real AWS SDK clients. `local-stack token` prints an access token for curl.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::GenerateApi;
use aws_config::{Region, SdkConfig};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use local::authorizer::JwtAuthorizer;
use local::converse::{Backend, ConverseServer, Knobs, OpenAiBackend};
use local::event_source::SqsEventSource;
use local::events::{self, EventApi};
use local::gateway::{self, GatewayConfig};
use local::moto::Moto;
use local::provision::{self, Names, Resources, UserPool};
use pipeline::adapters::{
    AppSyncEvents, BedrockTextModel, CognitoSessionCheck, DynamoJobStore, S3ArtifactStore,
    SqsJobQueue,
};
use pipeline::config::Env;
use recovery::Recovery;
use serde_json::{Value, json};
use status::StatusApi;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use worker::Worker;

type Error = Box<dyn std::error::Error + Send + Sync>;

const DEFAULT_PORT: u16 = 3000;
const DEMO_EMAIL: &str = "demo@example.com";
const DEMO_PASSWORD: &str = "Demo-Password-2026!";
const LOCAL_RECOVER_AFTER: Duration = Duration::from_secs(90);
/// How often the metrics' one-line summary is logged (when something changed).
const METRICS_SUMMARY_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Provider {
    /// Instant, deterministic answers that say they come from the offline model.
    Offline,
    /// Any OpenAI-compatible server (Ollama, llama.cpp's server, vLLM): real generations.
    Openai,
    /// The real Amazon Bedrock, with your own AWS credentials and region.
    Bedrock,
}

/// Runs the whole pipeline locally: AWS emulator, model endpoint, worker, API and web UI.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints an access token of a user of a running local stack, for curl:
    /// TOKEN=$(local-stack token)
    Token {
        /// The port the local stack serves on.
        #[arg(long, default_value_t = DEFAULT_PORT)]
        port: u16,
        /// The user's e-mail.
        #[arg(long, default_value = DEMO_EMAIL)]
        email: String,
        /// The user's password.
        #[arg(long, default_value = DEMO_PASSWORD)]
        password: String,
    },
}

#[derive(Debug, Args)]
struct Options {
    /// Port of the web UI and the API, on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Use this running AWS emulator instead of starting moto.
    #[arg(long, value_name = "URL")]
    aws_endpoint: Option<String>,
    /// The moto_server to start (default: .venv/bin/moto_server, else PATH).
    #[arg(long, env = "MOTO_SERVER", value_name = "PATH")]
    moto_server: Option<PathBuf>,
    /// Who answers the prompts.
    #[arg(long, value_enum, default_value_t = Provider::Offline)]
    model: Provider,
    /// With --model openai: the server's API base, up to the version.
    #[arg(long, default_value = "http://127.0.0.1:11434/v1", value_name = "URL")]
    openai_url: String,
    /// With --model openai: the server's model for every Bedrock model id not in --map.
    #[arg(long, default_value = "llama3.2", value_name = "NAME")]
    openai_model: String,
    /// With --model openai: BEDROCK_MODEL_ID=SERVER_MODEL, as often as needed.
    #[arg(long = "map", value_parser = model_pair, value_name = "ID=NAME")]
    model_map: Vec<(String, String)>,
    /// With --model openai: the API key, if the server wants one.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    openai_api_key: Option<String>,
    /// The offline model's pace, in words a second (0: the whole answer at once).
    #[arg(long, default_value_t = 40.0, value_parser = pace, value_name = "WORDS")]
    words_per_second: f64,
    /// Fault knob: milliseconds added to every model answer.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    latency_ms: u64,
    /// Fault knob: share of model calls (0 to 1) throttled, to watch retries.
    #[arg(long, default_value_t = 0.0, value_parser = rate, value_name = "RATE")]
    throttle_rate: f64,
    /// Fault knob: share of model calls (0 to 1) refused, to watch jobs fail.
    #[arg(long, default_value_t = 0.0, value_parser = rate, value_name = "RATE")]
    error_rate: f64,
    /// Seconds one worker invocation may take; also the queue's visibility timeout, after
    /// which a message whose invocation died comes back (failed attempts come back sooner,
    /// after RETRY_BASE_SECONDS doubling).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    worker_timeout: u64,
    /// Seconds between two sweeps for stranded jobs (EventBridge Scheduler's part).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    sweep_every: u64,
    /// The static web UI to serve.
    #[arg(long, default_value = "web", value_name = "DIR")]
    web_dir: PathBuf,
    /// E-mail of the demo user created at start.
    #[arg(long, default_value = DEMO_EMAIL)]
    demo_email: String,
    /// Password of the demo user (it must meet the pool's password policy).
    #[arg(long, default_value = DEMO_PASSWORD)]
    demo_password: String,
    /// Region of the emulated resources (and of Bedrock with --model bedrock).
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Also ask Cognito whether each access token is still valid (COGNITO_REVOCATION_CHECK).
    #[arg(long)]
    revocation_check: bool,
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{text:?} is not a rate from 0 to 1")),
    }
}

fn pace(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(pace) if pace.is_finite() && pace >= 0.0 => Ok(pace),
        _ => Err(format!(
            "{text:?} is not a number of words a second (0 or more)"
        )),
    }
}

fn model_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(id, name)| !id.is_empty() && !name.is_empty())
        .map(|(id, name)| (id.to_owned(), name.to_owned()))
        .ok_or_else(|| format!("{text:?} is not BEDROCK_MODEL_ID=SERVER_MODEL"))
}

/// Numbered start-up steps with their durations.
struct Progress {
    step: usize,
    of: usize,
    started: Instant,
}

impl Progress {
    fn new(of: usize) -> Self {
        Self {
            step: 0,
            of,
            started: Instant::now(),
        }
    }

    fn begin(&mut self, what: &str) {
        self.step += 1;
        self.started = Instant::now();
        eprint!("[{}/{}] {what:<42}", self.step, self.of);
    }

    fn done(&self, detail: &str) {
        eprintln!(" {:>6.1} s  {detail}", self.started.elapsed().as_secs_f64());
    }
}

/// The command line, its help naming the functions' settings that the environment gives.
fn command() -> clap::Command {
    Cli::command().after_help(format!(
        "The functions' settings ({}) are read from the environment, as the functions read \
         them; unset, RECOVER_AFTER_SECONDS is 90 here (900 deployed).",
        settings_read().join(", ")
    ))
}

/// The variables the functions' settings are read from: asked for by their own `from_env`
/// (and the metrics' namespace), so that the list cannot fall behind the code.
fn settings_read() -> Vec<String> {
    let env = Env::from_map(HashMap::new());
    // Only the names asked for matter here; the defaults always read.
    let _ = api::Settings::from_env(&env);
    let _ = status::Settings::from_env(&env);
    let _ = worker::Settings::from_env(&env);
    let _ = recovery::Settings::from_env(&env);
    pipeline::metrics::namespace(&env);
    env.names_read()
}

#[tokio::main]
async fn main() {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|error| error.exit());
    tracing_subscriber::fmt()
        .with_target(false)
        // Colours only for a person at a terminal, never into a log file or a pipe.
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,aws=warn,aws_config=warn,aws_smithy_runtime=warn".into()),
        )
        .init();
    let result = match cli.command {
        Some(Command::Token {
            port,
            email,
            password,
        }) => print_token(port, &email, &password).await,
        None => run(cli.options).await,
    };
    if let Err(error) = result {
        eprintln!("\nerror: {error}");
        std::process::exit(1);
    }
}

/// The whole stack, step by step, until Ctrl-C or SIGTERM.
async fn run(options: Options) -> Result<(), Error> {
    let started = Instant::now();
    // Before any function runs: their metrics come here instead of CloudWatch.
    let metrics = local::metrics::install();
    tokio::spawn(local::metrics::log_summaries(
        metrics,
        METRICS_SUMMARY_EVERY,
    ));
    if !options.web_dir.join("index.html").is_file() {
        return Err(format!(
            "no web UI at {} (index.html missing): run from the repository's root or give --web-dir",
            options.web_dir.display()
        )
        .into());
    }
    // The functions' own settings, read from the environment as in Lambda; a bad one stops
    // the stack before anything starts.
    let env = Env::from_process();
    let mut api_settings = api::Settings::from_env(&env)?;
    let mut status_settings = status::Settings::from_env(&env)?;
    let mut worker_settings = worker::Settings::from_env(&env)?;
    let mut recovery_settings = recovery::Settings::from_env(&env)?;
    if env.optional("RECOVER_AFTER_SECONDS").is_none() {
        // Minutes are too long to watch a repair on a laptop; still above the retry backoff.
        recovery_settings.recover_after = LOCAL_RECOVER_AFTER;
    }

    // Bind first: a busy port should fail before anything else starts.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], options.port)))
        .await
        .map_err(|e| {
            format!(
                "port {} is not free ({e}); choose another with --port",
                options.port
            )
        })?;
    let port = listener.local_addr()?.port();
    let own_origin = format!("http://127.0.0.1:{port}");
    for http in [&mut api_settings.http, &mut status_settings.http] {
        // ALLOWED_ORIGIN is honoured as deployed; unset, the UI's own origin.
        http.allowed_origin
            .get_or_insert_with(|| own_origin.clone());
        http.revocation_check |= options.revocation_check;
    }
    // The queue's visibility timeout is the invocation's time, as in the template.
    worker_settings.write_reserve = Duration::from_secs(options.worker_timeout / 6);
    let max_attempts = worker_settings.max_attempts;

    let mut progress = Progress::new(6);
    progress.begin("AWS emulator (moto)");
    let (_moto, aws_url) = start_emulator(&options).await?;
    progress.done(&aws_url);
    let aws = local::moto::sdk_config(&aws_url, &options.region).await;

    progress.begin("table, queue and dead-letter queue, bucket");
    let resources = provision::provision(
        &aws,
        &Names::with_prefix("bedrock-jobs"),
        options.worker_timeout as u32,
    )
    .await?;
    progress.done(&format!(
        "table {}, bucket {}",
        resources.table, resources.bucket
    ));

    progress.begin("Cognito user pool and demo user");
    let pool = provision::create_user_pool(&aws, "bedrock-jobs-users").await?;
    provision::create_user(&aws, &pool, &options.demo_email, &options.demo_password).await?;
    progress.done(&format!("pool {}", pool.pool_id));

    progress.begin(&format!("model endpoint ({:?})", options.model).to_lowercase());
    let (converse, bedrock_config) = start_model_endpoint(&options, &aws).await?;
    progress.done(&model_summary(&options));

    progress.begin("worker and recovery (SQS, schedule)");
    let (stop, stopped) = watch::channel(false);
    let store = DynamoJobStore::new(&aws, &resources.table);
    let worker_task = start_worker(
        &options,
        &aws,
        &resources,
        &bedrock_config,
        &events_urls(port).0,
        worker_settings,
        stopped.clone(),
    );
    let recovery_tasks = start_recovery(&options, &aws, &resources, recovery_settings, stopped);
    progress.done(&format!(
        "batches of up to 10, {} s per invocation; sweep every {} s, repairs after {} s",
        options.worker_timeout,
        options.sweep_every,
        recovery_settings.recover_after.as_secs()
    ));

    progress.begin("gateway (web UI and API)");
    let sessions = || Some(CognitoSessionCheck::new(&aws));
    let api = api::router(
        GenerateApi::new(
            store.clone(),
            SqsJobQueue::new(&aws, &resources.queue_url),
            &resources.bucket,
            api_settings.clone(),
        ),
        sessions().filter(|_| api_settings.http.revocation_check),
    );
    let status = status::router(
        StatusApi::new(store, &resources.bucket, status_settings.clone()),
        sessions().filter(|_| status_settings.http.revocation_check),
    );
    // AppSync Events' part: its subscribers' tokens are checked as the API's are, and a
    // subscription to a job marks it watched, as the namespace's subscribe handler does.
    let events = Arc::new(
        EventApi::new(authorizer(&options, &aws_url, &pool), &options.region).with_on_subscribe(
            events::watch_jobs(DynamoJobStore::new(&aws, &resources.table)),
        ),
    );
    let app = gateway::router(
        api,
        status,
        events.router(),
        authorizer(&options, &aws_url, &pool),
        GatewayConfig {
            web_dir: options.web_dir.clone(),
            web_config: web_config(&options, port, &pool, &api_settings, max_attempts),
            cognito_endpoint: format!("{aws_url}/"),
            allowed_origin: api_settings.http.origin().to_owned(),
            port,
        },
    );
    progress.done(&own_origin);

    let (events_http, events_realtime) = events_urls(port);
    eprintln!(
        "\nReady in {:.1} s. Open {own_origin} and sign in as {} with password {}\n\
         (or sign up: the emulator accepts any confirmation code). Metrics: {own_origin}/metrics.\n\
         Live output (AppSync Events): publish to {events_http} (SigV4), subscribe at {events_realtime}.\n\
         Ctrl-C stops everything.\n",
        started.elapsed().as_secs_f64(),
        options.demo_email,
        options.demo_password,
    );
    eprintln!(
        "{}",
        exports(&options, &aws_url, &resources, converse.as_ref(), port)
    );

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    eprintln!("\nstopping…");
    let _ = stop.send(true);
    let _ = worker_task.await;
    for task in recovery_tasks {
        let _ = task.await;
    }
    eprintln!("stopped.");
    Ok(())
}

/// moto as a child process, or the emulator given by `--aws-endpoint`.
async fn start_emulator(options: &Options) -> Result<(Option<Moto>, String), Error> {
    if let Some(url) = &options.aws_endpoint {
        return Ok((None, url.clone()));
    }
    let binary = options
        .moto_server
        .clone()
        .unwrap_or_else(|| Moto::find_binary(&std::env::current_dir().unwrap_or_default()));
    let moto = tokio::task::spawn_blocking(move || Moto::start(&binary)).await??;
    let url = moto.url().to_owned();
    Ok((Some(moto), url))
}

/// The Converse endpoint the worker calls: ours (offline or forwarding to an
/// OpenAI-compatible server), or the real Bedrock with the user's own credentials.
async fn start_model_endpoint(
    options: &Options,
    aws: &SdkConfig,
) -> Result<(Option<ConverseServer>, SdkConfig), Error> {
    let backend = match options.model {
        Provider::Bedrock => {
            let real = pipeline::aws::sdk_defaults()
                .region(Region::new(options.region.clone()))
                .load()
                .await;
            return Ok((None, real));
        }
        Provider::Openai => Backend::OpenAi(OpenAiBackend {
            base_url: options.openai_url.clone(),
            default_model: options.openai_model.clone(),
            model_map: options.model_map.iter().cloned().collect::<HashMap<_, _>>(),
            api_key: options.openai_api_key.clone(),
        }),
        Provider::Offline => Backend::Offline,
    };
    let knobs = Knobs {
        latency: Duration::from_millis(options.latency_ms),
        throttle_rate: options.throttle_rate,
        error_rate: options.error_rate,
        words_per_second: options.words_per_second,
    };
    let server = ConverseServer::start_with(([127, 0, 0, 1], 0).into(), backend, knobs).await?;
    let config = aws.to_builder().endpoint_url(server.url()).build();
    Ok((Some(server), config))
}

/// What answers the prompts, and which fault knobs are turned.
fn model_summary(options: &Options) -> String {
    let provider = match options.model {
        Provider::Offline if options.words_per_second > 0.0 => format!(
            "echoes the prompt, {} words a second",
            options.words_per_second
        ),
        Provider::Offline => "echoes the prompt, all at once".to_owned(),
        Provider::Openai => format!("{} ({})", options.openai_url, options.openai_model),
        Provider::Bedrock => return format!("Amazon Bedrock in {}", options.region),
    };
    let mut faults = Vec::new();
    if options.latency_ms > 0 {
        faults.push(format!("+{} ms latency", options.latency_ms));
    }
    if options.throttle_rate > 0.0 {
        faults.push(format!("{}% throttled", options.throttle_rate * 100.0));
    }
    if options.error_rate > 0.0 {
        faults.push(format!("{}% refused", options.error_rate * 100.0));
    }
    if faults.is_empty() {
        provider
    } else {
        format!("{provider}; faults: {}", faults.join(", "))
    }
}

/// The worker, invoked by a loop that plays the SQS event source mapping.
fn start_worker(
    options: &Options,
    aws: &SdkConfig,
    resources: &Resources,
    bedrock: &SdkConfig,
    events_url: &str,
    settings: worker::Settings,
    stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // It publishes watched jobs' text to the gateway's Event API, signed as deployed.
    let worker = Worker::new(
        DynamoJobStore::new(aws, &resources.table),
        S3ArtifactStore::new(aws, &resources.bucket),
        BedrockTextModel::new(bedrock),
        SqsJobQueue::new(aws, &resources.queue_url),
        settings,
    )
    .with_feed(AppSyncEvents::new(aws, events_url));
    let source = SqsEventSource::new(aws, &resources.queue_url, &resources.queue_arn);
    let timeout = Duration::from_secs(options.worker_timeout);
    tokio::spawn(async move {
        local::worker_loop::run(&source, &worker, timeout, stopped).await;
    })
}

/// The recovery function, fed by the dead-letter queue and by a timer, as deployed.
fn start_recovery(
    options: &Options,
    aws: &SdkConfig,
    resources: &Resources,
    settings: recovery::Settings,
    stopped: watch::Receiver<bool>,
) -> [JoinHandle<()>; 2] {
    let recovery = std::sync::Arc::new(Recovery::new(
        DynamoJobStore::new(aws, &resources.table),
        S3ArtifactStore::new(aws, &resources.bucket),
        SqsJobQueue::new(aws, &resources.queue_url),
        SqsJobQueue::new(aws, &resources.dead_letter_queue_url),
        settings,
    ));
    let source = SqsEventSource::new(
        aws,
        &resources.dead_letter_queue_url,
        &resources.dead_letter_queue_arn,
    );
    let dead_letters = {
        let (recovery, stopped) = (recovery.clone(), stopped.clone());
        tokio::spawn(async move {
            let timeout = Duration::from_secs(60);
            local::worker_loop::run(&source, &*recovery, timeout, stopped).await;
        })
    };
    let interval = Duration::from_secs(options.sweep_every);
    let sweeps = tokio::spawn(async move {
        local::worker_loop::sweep_every(&recovery, interval, stopped).await;
    });
    [dead_letters, sweeps]
}

/// API Gateway's JWT authorizer for the pool's app client. moto stamps the real AWS issuer
/// host in its tokens while it serves the JWKS itself.
fn authorizer(options: &Options, aws_url: &str, pool: &UserPool) -> JwtAuthorizer {
    JwtAuthorizer::new(
        format!(
            "https://cognito-idp.{}.amazonaws.com/{}",
            options.region, pool.pool_id
        ),
        pool.client_id.clone(),
        format!("{aws_url}/{}/.well-known/jwks.json", pool.pool_id),
    )
}

/// The Event API's endpoints on the gateway: HTTP (publish) and real-time (WebSocket).
fn events_urls(port: u16) -> (String, String) {
    (
        format!("http://127.0.0.1:{port}{}", events::PUBLISH_PATH),
        format!("ws://127.0.0.1:{port}{}", events::REALTIME_PATH),
    )
}

/// The web UI's `config.json`, as the deploy script writes it from the stack's outputs.
fn web_config(
    options: &Options,
    port: u16,
    pool: &UserPool,
    api: &api::Settings,
    max_attempts: u32,
) -> Value {
    let origin = format!("http://127.0.0.1:{port}");
    let (events_http, events_realtime) = events_urls(port);
    json!({
        "apiUrl": origin,
        "region": options.region,
        "cognitoEndpoint": format!("{origin}/cognito"),
        "userPoolId": pool.pool_id,
        "userPoolClientId": pool.client_id,
        "models": api.limits.allowed_models,
        "defaultModel": api.limits.default_model,
        "maxOutputTokens": api.limits.max_output_tokens,
        "maxPromptChars": api.limits.max_prompt_chars,
        "maxAttempts": max_attempts,
        "events": {"http": events_http, "realtime": events_realtime},
        "local": true,
    })
}

/// Ready-to-paste lines that aim a function (`cargo lambda watch`), the AWS CLI or curl at
/// this stack.
fn exports(
    options: &Options,
    aws_url: &str,
    resources: &Resources,
    converse: Option<&ConverseServer>,
    port: u16,
) -> String {
    let mut lines = vec![
        "To aim a function (cargo lambda watch) or the AWS CLI at this stack, paste:".to_owned(),
        format!(
            "  export AWS_ENDPOINT_URL={aws_url} AWS_REGION={} AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local",
            options.region
        ),
        format!(
            "  export JOBS_TABLE={} JOBS_QUEUE_URL={} DEAD_LETTER_QUEUE_URL={} ARTIFACTS_BUCKET={}",
            resources.table, resources.queue_url, resources.dead_letter_queue_url, resources.bucket
        ),
    ];
    if let Some(converse) = converse {
        lines.push(format!(
            "  export AWS_ENDPOINT_URL_BEDROCK_RUNTIME={}",
            converse.url()
        ));
    }
    let (events_http, events_realtime) = events_urls(port);
    lines.push(format!(
        "  export EVENTS_HTTP_URL={events_http} EVENTS_REALTIME_URL={events_realtime}"
    ));
    let port_option = if port == DEFAULT_PORT {
        String::new()
    } else {
        format!(" --port {port}")
    };
    lines.push(format!(
        "An access token for curl: TOKEN=$(cargo run -q -p local --bin local-stack -- token{port_option})"
    ));
    lines.join("\n")
}

/// `local-stack token`: signs a user in through the running stack's Cognito proxy, exactly
/// as the web UI does, and prints the access token.
async fn print_token(port: u16, email: &str, password: &str) -> Result<(), Error> {
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let not_running = |error: reqwest::Error| {
        format!(
            "no local stack answers at {base} ({error}); start it with ./scripts/dev.sh, or give --port"
        )
    };
    let config: Value = http
        .get(format!("{base}/config.json"))
        .send()
        .await
        .map_err(not_running)?
        .json()
        .await
        .map_err(not_running)?;
    let answer = http
        .post(format!("{base}/cognito"))
        .header(
            "x-amz-target",
            "AWSCognitoIdentityProviderService.InitiateAuth",
        )
        .header("content-type", "application/x-amz-json-1.1")
        .json(&json!({
            "AuthFlow": "USER_PASSWORD_AUTH",
            "ClientId": config["userPoolClientId"],
            "AuthParameters": {"USERNAME": email, "PASSWORD": password},
        }))
        .send()
        .await
        .map_err(not_running)?;
    let body: Value = answer.json().await.map_err(not_running)?;
    match body["AuthenticationResult"]["AccessToken"].as_str() {
        Some(token) => {
            println!("{token}");
            Ok(())
        }
        None => Err(format!(
            "Cognito did not sign {email} in: {}",
            body["message"].as_str().unwrap_or("no reason given")
        )
        .into()),
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The help lists every setting a function reads, those added since among them.
    #[test]
    fn the_help_names_every_setting_the_functions_read() {
        let help = command().render_long_help().to_string();
        for name in [
            "MODEL_ID",
            "ALLOWED_MODEL_IDS",
            "MAX_JOBS_PER_MINUTE",
            "BUDGET_TOKENS_PER_DAY",
            "BUDGET_USD_PER_MONTH",
            "MODEL_PRICES",
            "METRICS_NAMESPACE",
            "STREAM_FLUSH_MS",
            "RECOVER_AFTER_SECONDS",
            "SWEEP_LIMIT",
            "ALLOWED_ORIGIN",
            "COGNITO_REVOCATION_CHECK",
        ] {
            assert!(help.contains(name), "{name} missing from: {help}");
        }
        assert!(
            !help.contains("JOBS_TABLE"),
            "no resource names: the stack makes them"
        );
    }

    /// The web UI and a developer's shell learn where the Event API is from the stack itself.
    #[test]
    fn the_web_ui_and_the_exports_name_the_event_api() {
        let options = Cli::try_parse_from(["local-stack"]).unwrap().options;
        let pool = UserPool {
            pool_id: "us-east-1_pool".into(),
            client_id: "client".into(),
        };
        let settings = api::Settings::from_env(&Env::from_map(HashMap::new())).unwrap();
        let config = web_config(&options, 4321, &pool, &settings, 3);
        assert_eq!(config["apiUrl"], "http://127.0.0.1:4321");
        assert_eq!(
            config["events"],
            json!({
                "http": "http://127.0.0.1:4321/event",
                "realtime": "ws://127.0.0.1:4321/event/realtime",
            })
        );
        let resources = Resources {
            table: "t".into(),
            queue_url: "q".into(),
            queue_arn: "qa".into(),
            dead_letter_queue_url: "d".into(),
            dead_letter_queue_arn: "da".into(),
            bucket: "b".into(),
        };
        let lines = exports(&options, "http://127.0.0.1:1", &resources, None, 4321);
        assert!(
            lines.lines().any(|line| line
                == "  export EVENTS_HTTP_URL=http://127.0.0.1:4321/event EVENTS_REALTIME_URL=ws://127.0.0.1:4321/event/realtime"),
            "{lines}"
        );
    }

    #[test]
    fn every_option_says_what_it_is_for() {
        Cli::command().debug_assert();
        let command = Cli::command();
        let subcommands = command.get_subcommands().collect::<Vec<_>>();
        for owner in std::iter::once(&command).chain(subcommands) {
            for argument in owner.get_arguments() {
                let id = argument.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(argument.get_help().is_some(), "--{id} has no description");
            }
        }
    }
}
