//! The shipped binary on a free port, configured the way an operator does it.

use std::time::Duration;

use http::Method;
use sonic_rs::Value;

use super::http::HttpClient;
use super::proxy::MSC3575;

/// The shipped binary, configured the way an operator does it.
pub struct Binary {
    child: Option<std::process::Child>,
    pub url: String,
    /// Where its stderr goes, when the test reads its logs.
    log: Option<std::path::PathBuf>,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Binary {
    pub async fn start(server_url: &str, db_url: &str) -> Binary {
        Self::start_with(server_url, db_url, &[], None).await
    }

    /// With more settings in `env`, its stderr in `log` (else inherited).
    pub async fn start_with(
        server_url: &str,
        db_url: &str,
        env: &[(&str, &str)],
        log: Option<std::path::PathBuf>,
    ) -> Binary {
        let mut command = command();
        command
            .env("SYNCV3_DB", db_url)
            .env("SYNCV3_SECRET", "binary-e2e-secret")
            .envs(env.iter().copied());
        Self::spawn(command, server_url, log).await
    }

    /// As the README's quick start runs it: no setting but the homeserver, in `dir`, so
    /// the embedded store and the generated secret land in `dir/slidesync-data`.
    pub async fn start_with_only_the_server(server_url: &str, dir: &std::path::Path) -> Binary {
        let mut command = command();
        command.current_dir(dir);
        Self::spawn(command, server_url, None).await
    }

    /// Adds the homeserver, a free port (tests run in parallel; the default port would
    /// clash) and quiet logs (unless `command` sets a level) to `command`, and waits
    /// until it answers.
    async fn spawn(
        mut command: std::process::Command,
        server_url: &str,
        log: Option<std::path::PathBuf>,
    ) -> Binary {
        let port = free_port();
        let stderr = match &log {
            Some(path) => std::fs::File::create(path).expect("log file").into(),
            None => std::process::Stdio::inherit(),
        };
        let quiet = !command.get_envs().any(|(key, _)| key == "SYNCV3_LOG_LEVEL");
        if quiet {
            command.env("SYNCV3_LOG_LEVEL", "warn");
        }
        let child = command
            .env("SYNCV3_SERVER", server_url)
            .env("SYNCV3_BINDADDR", format!("127.0.0.1:{port}"))
            .stderr(stderr)
            .spawn()
            .expect("the slidesync binary starts");
        let url = format!("http://127.0.0.1:{port}");
        let client = HttpClient::new();
        for _ in 0..200 {
            let probe = client
                .try_request(
                    Method::GET,
                    &format!("{url}/client/server.json"),
                    None,
                    None,
                )
                .await;
            if probe.is_ok_and(|r| r.status == 200) {
                return Binary {
                    child: Some(child),
                    url,
                    log,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("slidesync did not start listening on {url}");
    }

    pub async fn sync(&self, token: &str, body: &Value) -> Value {
        let resp = HttpClient::new()
            .request(
                Method::POST,
                &format!("{}{MSC3575}?timeout=0", self.url),
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    }

    /// SIGTERM, as a service manager stops it; it must exit cleanly. Returns its log
    /// when it was started with one.
    pub fn stop(mut self) -> Option<String> {
        let mut child = self.child.take().expect("running");
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        assert!(status.success(), "slidesync exited with {status}");
        self.log
            .take()
            .map(|path| std::fs::read_to_string(path).expect("the log"))
    }

    /// SIGKILL: the process dies wherever it is, with writes still queued.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let _ = child.wait();
    }
}

/// The binary with none of the test process' environment: only what a test sets.
fn command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_slidesync"));
    command.env_clear();
    command
}

impl Drop for Binary {
    /// A failing test must not leave the process behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
