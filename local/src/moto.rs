//! The AWS emulator: `moto_server` as a child process on 127.0.0.1.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// A running `moto_server`. It stops when this is dropped, and also when the process that
/// started it dies: a wrapper shell waits on a pipe from us and stops moto when it closes.
pub struct Moto {
    url: String,
    child: Child,
}

#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error(
        "could not run {binary}: {source}. Install moto first (the run and test commands do: \
         python3 -m venv .venv && .venv/bin/pip install -r requirements.txt), or give the \
         address of a running emulator with --aws-endpoint"
    )]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("moto_server did not answer on {address} within {seconds} s; its output:\n{output}")]
    NotReady {
        address: SocketAddr,
        seconds: u64,
        output: String,
    },
}

/// See `local/moto/sitecustomize.py`: it makes moto's DynamoDB atomic, as DynamoDB is.
const SITECUSTOMIZE: &str = include_str!("../moto/sitecustomize.py");

/// A folder holding the patch as `sitecustomize.py`, ahead of any `PYTHONPATH` already set.
fn atomic_dynamodb_patch(port: u16) -> Result<std::ffi::OsString, MotoError> {
    let folder = std::env::temp_dir().join(format!("moto-{port}-site"));
    std::fs::create_dir_all(&folder)
        .and_then(|()| std::fs::write(folder.join("sitecustomize.py"), SITECUSTOMIZE))
        .map_err(|source| MotoError::Spawn {
            binary: "moto_server".into(),
            source,
        })?;
    let existing = std::env::var_os("PYTHONPATH").unwrap_or_default();
    let paths = std::iter::once(folder).chain(std::env::split_paths(&existing));
    std::env::join_paths(paths).map_err(|error| MotoError::Spawn {
        binary: "moto_server".into(),
        source: std::io::Error::other(error),
    })
}

impl Moto {
    /// `moto_server` from `<workspace>/.venv`, else from `PATH`.
    pub fn find_binary(workspace: &Path) -> PathBuf {
        let venv = workspace.join(".venv/bin/moto_server");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("moto_server")
        }
    }

    /// Starts `binary` on a free port and waits until it accepts connections.
    pub fn start(binary: &Path) -> Result<Self, MotoError> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|source| MotoError::Spawn {
                binary: binary.display().to_string(),
                source,
            })?
            .port();
        let log = std::env::temp_dir().join(format!("moto-{port}.log"));
        let python_path = atomic_dynamodb_patch(port)?;
        let wrapper = format!(
            r#""$0" -H 127.0.0.1 -p {port} >"$1" 2>&1 & pid=$!; trap 'kill $pid; wait $pid' EXIT; read -r _"#
        );
        let child = Command::new("bash")
            .args(["-c", &wrapper])
            .arg(binary)
            .arg(&log)
            .env("PYTHONPATH", python_path)
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|source| MotoError::Spawn {
                binary: binary.display().to_string(),
                source,
            })?;
        let mut moto = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let limit = Duration::from_secs(60);
        let started = Instant::now();
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            let exited = moto.child.try_wait().ok().flatten().is_some();
            if exited || started.elapsed() > limit {
                let mut output = String::new();
                let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut output));
                if output.contains("not found") || output.contains("No such file") {
                    return Err(MotoError::Spawn {
                        binary: binary.display().to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, output),
                    });
                }
                return Err(MotoError::NotReady {
                    address,
                    seconds: started.elapsed().as_secs(),
                    output,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Closing the wrapper's stdin makes it stop moto; then reap it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The local stack's static credentials: the emulator takes any, and the Event API emulator
/// (`crate::events`) verifies its publishers' SigV4 signatures against these.
pub const ACCESS_KEY_ID: &str = "local";
pub const SECRET_ACCESS_KEY: &str = "local";

/// An SDK configuration that sends every service to the emulator at `url`, with
/// throwaway credentials ([`ACCESS_KEY_ID`], [`SECRET_ACCESS_KEY`]).
pub async fn sdk_config(url: &str, region: &str) -> SdkConfig {
    pipeline::aws::sdk_defaults()
        .endpoint_url(url)
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "moto",
        ))
        .load()
        .await
}
