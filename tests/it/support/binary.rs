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
        Self::start_with(server_url, db_url, &[("SYNCV3_LOG_LEVEL", "warn")], None).await
    }

    /// With more settings in `env`, its stderr in `log` (else inherited).
    pub async fn start_with(
        server_url: &str,
        db_url: &str,
        env: &[(&str, &str)],
        log: Option<std::path::PathBuf>,
    ) -> Binary {
        let port = free_port();
        let stderr = match &log {
            Some(path) => std::fs::File::create(path).expect("log file").into(),
            None => std::process::Stdio::inherit(),
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_slidesync"))
            .env_clear()
            .env("SYNCV3_SERVER", server_url)
            .env("SYNCV3_DB", db_url)
            .env("SYNCV3_SECRET", "binary-e2e-secret")
            .env("SYNCV3_BINDADDR", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
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

impl Drop for Binary {
    /// A failing test must not leave the process behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
