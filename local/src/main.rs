//! `local-stack`: the whole pipeline on this machine, with no AWS account.
//!
//! It starts the AWS emulator (moto) and creates the table, queues, bucket and Cognito user
//! pool as the template does, starts a Bedrock-compatible model endpoint, runs the worker as
//! the SQS event source would, and serves the web UI and the API on one port, verifying
//! Cognito tokens as API Gateway's authorizer does. The functions' own code runs underneath,
//! through the real AWS SDK clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::GenerateApi;
use aws_config::{BehaviorVersion, Region};
use clap::{Parser, ValueEnum};
use local::authorizer::JwtAuthorizer;
use local::converse::{Backend, ConverseServer, Knobs, OpenAiBackend};
use local::event_source::SqsEventSource;
use local::gateway::{self, GatewayConfig};
use local::moto::Moto;
use local::provision::{self, Names};
use pipeline::adapters::{
    BedrockTextModel, CognitoSessionCheck, DynamoJobStore, S3ArtifactStore, SqsJobQueue,
};
use pipeline::config::Env;
use pipeline::http::Cors;
use serde_json::json;
use status::StatusApi;
use tokio::sync::watch;
use worker::Worker;

type Error = Box<dyn std::error::Error + Send + Sync>;

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
#[command(
    version,
    after_help = "Model settings (MODEL_ID, ALLOWED_MODEL_IDS, MAX_PROMPT_CHARS, \
MAX_OUTPUT_TOKENS, JOB_TTL_DAYS, MAX_ATTEMPTS) are read from the environment, as the functions read them."
)]
struct Options {
    /// Port of the web UI and the API, on 127.0.0.1.
    #[arg(long, default_value_t = 3000)]
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
    /// which a job whose attempt failed is tried again.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    worker_timeout: u64,
    /// The static web UI to serve.
    #[arg(long, default_value = "web", value_name = "DIR")]
    web_dir: PathBuf,
    /// The demo user created at start.
    #[arg(long, default_value = "demo@example.com")]
    demo_email: String,
    #[arg(long, default_value = "Demo-Password-2026!")]
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
    fn begin(&mut self, what: &str) {
        self.step += 1;
        self.started = Instant::now();
        eprint!("[{}/{}] {what:<42}", self.step, self.of);
    }

    fn done(&self, detail: &str) {
        eprintln!(" {:>6.1} s  {detail}", self.started.elapsed().as_secs_f64());
    }
}

#[tokio::main]
async fn main() {
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,aws=warn,aws_config=warn,aws_smithy_runtime=warn".into()),
        )
        .init();
    if let Err(error) = run(options).await {
        eprintln!("\nerror: {error}");
        std::process::exit(1);
    }
}

async fn run(options: Options) -> Result<(), Error> {
    let started = Instant::now();
    let mut progress = Progress {
        step: 0,
        of: 6,
        started,
    };
    if !options.web_dir.join("index.html").is_file() {
        return Err(format!(
            "no web UI at {} (index.html missing): run from the repository's root or give --web-dir",
            options.web_dir.display()
        )
        .into());
    }
    let env = Env::from_process();
    let limits = env.limits()?;
    let address = SocketAddr::from(([127, 0, 0, 1], options.port));
    // Bind first: a busy port should fail before anything else starts.
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        format!(
            "port {} is not free ({e}); choose another with --port",
            options.port
        )
    })?;
    let origin = format!("http://{address}");

    progress.begin("AWS emulator (moto)");
    let (_moto, aws_url) = match &options.aws_endpoint {
        Some(url) => (None, url.clone()),
        None => {
            let workspace = std::env::current_dir()?;
            let binary = options
                .moto_server
                .clone()
                .unwrap_or_else(|| Moto::find_binary(&workspace));
            let moto = tokio::task::spawn_blocking(move || Moto::start(&binary)).await??;
            let url = moto.url().to_owned();
            (Some(moto), url)
        }
    };
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
    let knobs = Knobs {
        latency: Duration::from_millis(options.latency_ms),
        throttle_rate: options.throttle_rate,
        error_rate: options.error_rate,
    };
    let (_converse, bedrock_config) = match options.model {
        Provider::Bedrock => {
            let real = aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(options.region.clone()))
                .load()
                .await;
            (None, real)
        }
        provider => {
            let backend = match provider {
                Provider::Openai => Backend::OpenAi(OpenAiBackend {
                    base_url: options.openai_url.clone(),
                    default_model: options.openai_model.clone(),
                    model_map: options.model_map.iter().cloned().collect::<HashMap<_, _>>(),
                    api_key: options.openai_api_key.clone(),
                }),
                _ => Backend::Offline,
            };
            let server =
                ConverseServer::start_with(([127, 0, 0, 1], 0).into(), backend, knobs).await?;
            let config = aws.to_builder().endpoint_url(server.url()).build();
            (Some(server), config)
        }
    };
    progress.done(&match options.model {
        Provider::Offline => "answers instantly, echoing the prompt".to_owned(),
        Provider::Openai => format!("{} ({})", options.openai_url, options.openai_model),
        Provider::Bedrock => format!("Amazon Bedrock in {}", options.region),
    });

    let store = DynamoJobStore::new(&aws, &resources.table);
    progress.begin("worker (SQS event source)");
    let (stop, stopped) = watch::channel(false);
    let worker = Worker::new(
        store.clone(),
        S3ArtifactStore::new(&aws, &resources.bucket),
        BedrockTextModel::new(&bedrock_config),
        worker::Settings {
            max_attempts: env.positive("MAX_ATTEMPTS", 3)?,
            write_reserve: Duration::from_secs(options.worker_timeout / 6),
        },
    );
    let source = SqsEventSource::new(&aws, &resources.queue_url, &resources.queue_arn);
    let worker_timeout = Duration::from_secs(options.worker_timeout);
    let worker_task = {
        let stopped = stopped.clone();
        tokio::spawn(async move {
            local::worker_loop::run(&source, &worker, worker_timeout, stopped).await;
        })
    };
    progress.done(&format!(
        "batches of up to 10, {} s per invocation",
        options.worker_timeout
    ));

    progress.begin("gateway (web UI and API)");
    let api = GenerateApi::new(
        store.clone(),
        SqsJobQueue::new(&aws, &resources.queue_url),
        options
            .revocation_check
            .then(|| CognitoSessionCheck::new(&aws)),
        api::Settings {
            limits: limits.clone(),
            job_ttl: chrono::Duration::days(env.positive("JOB_TTL_DAYS", 30)?),
            cors: Cors::new(&origin),
            jobs_per_minute: env.optional_positive("MAX_JOBS_PER_MINUTE")?,
            clock: chrono::Utc::now,
        },
    );
    let status = StatusApi::new(store.clone(), &resources.bucket, Cors::new(&origin));
    let authorizer = JwtAuthorizer::new(
        format!(
            "https://cognito-idp.{}.amazonaws.com/{}",
            options.region, pool.pool_id
        ),
        pool.client_id.clone(),
        format!("{aws_url}/{}/.well-known/jwks.json", pool.pool_id),
    );
    let web_config = json!({
        "apiUrl": origin,
        "region": options.region,
        "cognitoEndpoint": format!("{origin}/cognito"),
        "userPoolId": pool.pool_id,
        "userPoolClientId": pool.client_id,
        "models": limits.allowed_models,
        "defaultModel": limits.default_model,
        "maxOutputTokens": limits.max_output_tokens,
        "local": true,
    });
    let app = gateway::router(
        api,
        status,
        authorizer,
        GatewayConfig {
            web_dir: options.web_dir.clone(),
            web_config,
            cognito_endpoint: format!("{aws_url}/"),
            allowed_origin: origin.clone(),
        },
    );
    progress.done(&origin);

    eprintln!(
        "\nReady in {:.1} s. Open {origin} and sign in as {} with password {}\n\
         (or sign up: the emulator accepts any confirmation code). Ctrl-C stops everything.\n",
        started.elapsed().as_secs_f64(),
        options.demo_email,
        options.demo_password,
    );

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    eprintln!("\nstopping…");
    let _ = stop.send(true);
    let _ = worker_task.await;
    eprintln!("stopped.");
    Ok(())
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
