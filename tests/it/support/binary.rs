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
}

impl Binary {
    pub async fn start(server_url: &str, db_url: &str) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_slidesync"))
            .env_clear()
            .env("SYNCV3_SERVER", server_url)
            .env("SYNCV3_DB", db_url)
            .env("SYNCV3_SECRET", "binary-e2e-secret")
            .env("SYNCV3_BINDADDR", format!("127.0.0.1:{port}"))
            .env("SYNCV3_LOG_LEVEL", "warn")
            .stderr(std::process::Stdio::inherit())
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

    /// SIGTERM, as a service manager stops it; it must exit cleanly.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = child.wait().unwrap();
        assert!(status.success(), "slidesync exited with {status}");
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
