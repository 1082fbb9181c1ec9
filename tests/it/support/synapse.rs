//! A real Synapse for end-to-end tests: one per test process, started on first use.
//!
//! Synapse runs from a Python venv (`SLIDESYNC_SYNAPSE_VENV`, default
//! `<crate>/target/synapse-venv`; created and `pip install`ed on first use if it cannot
//! `import synapse`) with a fresh SQLite database in a temp dir, registration open and
//! every rate limit off. It is killed when the test process exits, however it exits.
//!
//! Each `#[tokio::test]` has its own runtime, so the shared [`Synapse`] holds nothing
//! tied to one: the child is owned by a plain thread, and each helper call opens its own
//! connection.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::Method;
use sonic_rs::{json, JsonValueTrait, Value};
use tokio::sync::{oneshot, OnceCell};

use super::http::{encode, HttpClient};

/// The release the e2e tests are known to pass against (`.ci/run` pins the same).
const SYNAPSE_RELEASE: &str = "matrix-synapse==1.163.2";

pub const SERVER_NAME: &str = "localhost";
/// The password of every user made by [`Synapse::register`], for [`Synapse::login`].
pub const TEST_PASSWORD: &str = "slidesync-test-password";

/// Counted from the moment the process is spawned, so a first-run `pip install` does
/// not count against it.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const READY_POLL: Duration = Duration::from_millis(100);
const TEMP_PREFIX: &str = "slidesync-synapse-";
const LOG_TAIL_LINES: usize = 40;

/// A running Synapse; see [`synapse`].
pub struct Synapse {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub base_url: String,
    /// Synapse's own log (WARNING and up); its stdout/stderr go to `stdio.log` beside it.
    pub log_path: PathBuf,
}

/// A logged-in device of a user.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub user_id: String,
    pub access_token: String,
    pub device_id: String,
}

/// Holds the error too, so that when startup fails every test reports why at once
/// instead of each trying (and waiting) again.
static SYNAPSE: OnceCell<Result<Synapse, String>> = OnceCell::const_new();

/// The Synapse of this test process, started by the first caller; the others wait.
/// Call it from tests on tokio's real clock (see [`HttpClient`]).
pub async fn synapse() -> &'static Synapse {
    match SYNAPSE.get_or_init(start).await {
        Ok(synapse) => synapse,
        Err(err) => panic!("{err}"),
    }
}

async fn start() -> Result<Synapse, String> {
    let (synapse, _process) = Launch::new()?.run().await?;
    Ok(synapse)
}

/// Where and how one Synapse runs: its directory (config, SQLite database, logs) and
/// port stay the same across restarts.
struct Launch {
    venv: PathBuf,
    dir: PathBuf,
    port: u16,
    config_path: PathBuf,
}

/// A running Synapse process: its pid, and its exit status once it has exited.
struct Process {
    pid: u32,
    exited: Arc<OnceLock<ExitStatus>>,
}

impl Launch {
    fn new() -> Result<Launch, String> {
        let venv = std::env::var_os("SLIDESYNC_SYNAPSE_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/synapse-venv"));
        remove_stale_dirs();
        let dir =
            std::env::temp_dir().join(format!("{TEMP_PREFIX}{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let port = free_port()?;
        let config_path = write_config(&dir, port)?;
        Ok(Launch {
            venv,
            dir,
            port,
            config_path,
        })
    }

    /// Starts Synapse and waits until it answers.
    async fn run(&self) -> Result<(Synapse, Process), String> {
        let base_url = format!("http://127.0.0.1:{}", self.port);
        let log_path = self.dir.join("homeserver.log");
        let (launched_tx, launched_rx) = oneshot::channel();
        let exited = Arc::new(OnceLock::new());
        let keeper_exited = exited.clone();
        let keeper_dir = self.dir.clone();
        let (venv, config_path) = (self.venv.clone(), self.config_path.clone());
        // PR_SET_PDEATHSIG fires when the thread that spawned the child ends, not the
        // process: so the child is spawned from a thread that lives as long as it does,
        // never from a test's (short-lived) runtime thread.
        std::thread::Builder::new()
            .name("synapse".into())
            .spawn(move || {
                let spawned = ensure_venv(&venv)
                    .and_then(|python| spawn_synapse(&python, &config_path, &keeper_dir));
                let mut child = match spawned {
                    Ok(child) => child,
                    Err(err) => {
                        let _ = launched_tx.send(Err(err));
                        return;
                    }
                };
                let _ = launched_tx.send(Ok((child.id(), Instant::now())));
                if let Ok(status) = child.wait() {
                    let _ = keeper_exited.set(status);
                }
            })
            .map_err(|e| format!("spawn the Synapse thread: {e}"))?;
        let (pid, spawned_at) = launched_rx
            .await
            .map_err(|_| "the Synapse thread died before starting Synapse".to_string())??;
        let process = Process { pid, exited };
        let synapse = Synapse { base_url, log_path };
        match wait_ready(&synapse.base_url, &process.exited).await {
            Ok(()) => {
                eprintln!(
                    "synapse: ready at {} in {:.2?} (dir {})",
                    synapse.base_url,
                    spawned_at.elapsed(),
                    self.dir.display()
                );
                Ok((synapse, process))
            }
            Err(err) => {
                process.signal(libc::SIGKILL);
                Err(format!(
                    "Synapse did not start: {err}\n{}",
                    log_tails(&self.dir)
                ))
            }
        }
    }
}

impl Process {
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, which its keeper thread reaps.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) };
    }

    /// Asks Synapse to stop and waits until it has (killing it after a while).
    async fn stop(&self) {
        self.signal(libc::SIGTERM);
        for _ in 0..300 {
            if self.exited.get().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.signal(libc::SIGKILL);
        while self.exited.get().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A Synapse of one test's own, which that test may restart: same port, same database,
/// so users, rooms and tokens survive it. Killed when dropped.
pub struct OwnSynapse {
    pub synapse: Synapse,
    launch: Launch,
    process: Process,
}

impl OwnSynapse {
    pub async fn start() -> OwnSynapse {
        let launch = Launch::new().unwrap_or_else(|e| panic!("{e}"));
        let (synapse, process) = launch.run().await.unwrap_or_else(|e| panic!("{e}"));
        OwnSynapse {
            synapse,
            launch,
            process,
        }
    }

    /// Stops Synapse, waits `down` with it stopped, and starts it again.
    pub async fn restart(&mut self, down: Duration) {
        self.process.stop().await;
        tokio::time::sleep(down).await;
        let (synapse, process) = self.launch.run().await.unwrap_or_else(|e| panic!("{e}"));
        self.synapse = synapse;
        self.process = process;
    }
}

impl Drop for OwnSynapse {
    fn drop(&mut self) {
        self.process.signal(libc::SIGKILL);
    }
}

/// Polls `/versions` until it answers 200, Synapse exits, or [`READY_TIMEOUT`] passes.
async fn wait_ready(base_url: &str, exited: &OnceLock<ExitStatus>) -> Result<(), String> {
    let client = HttpClient::new();
    let url = format!("{base_url}/_matrix/client/versions");
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no attempt");
    loop {
        if let Some(status) = exited.get() {
            return Err(format!("it exited during startup ({status})"));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!(
                "GET {url} did not answer 200 within {READY_TIMEOUT:?} (last: {last})"
            ));
        }
        let attempt = client.try_request(Method::GET, &url, None, None);
        match tokio::time::timeout(remaining, attempt).await {
            Ok(Ok(response)) if response.status.is_success() => return Ok(()),
            Ok(Ok(response)) => last = format!("{response:?}"),
            Ok(Err(err)) => last = err,
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The venv's python, after creating the venv and installing Synapse into it if it
/// cannot `import synapse`. Installs under an exclusive `flock` on `<venv>.lock` so
/// concurrent test processes (and `.ci/run`) do not install over each other.
fn ensure_venv(venv: &Path) -> Result<PathBuf, String> {
    let python = venv.join("bin/python");
    if imports_synapse(&python) {
        return Ok(python);
    }
    let mut lock_path = OsString::from(venv.as_os_str());
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    if let Some(parent) = lock_path.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    // SAFETY: flock(2) on a descriptor that `lock` keeps open; dropping `lock` unlocks.
    let flock = |operation| unsafe { libc::flock(lock.as_raw_fd(), operation) };
    if flock(libc::LOCK_EX | libc::LOCK_NB) != 0 {
        eprintln!(
            "synapse: waiting for {} (another install)",
            lock_path.display()
        );
        if flock(libc::LOCK_EX) != 0 {
            return Err(format!(
                "flock {}: {}",
                lock_path.display(),
                io::Error::last_os_error()
            ));
        }
    }
    if imports_synapse(&python) {
        return Ok(python); // another process installed it while we waited
    }
    eprintln!(
        "synapse: installing matrix-synapse into {} (takes a few minutes once)",
        venv.display()
    );
    run_visibly(Command::new("python3").arg("-m").arg("venv").arg(venv))?;
    run_visibly(Command::new(&python).args(["-m", "pip", "install", SYNAPSE_RELEASE]))?;
    if !imports_synapse(&python) {
        return Err(format!(
            "{} still cannot import synapse after installing it",
            python.display()
        ));
    }
    eprintln!("synapse: installed");
    Ok(python)
}

fn imports_synapse(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import synapse"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs a setup command with its output on our stderr, which `cargo test` does not
/// capture, so a long install shows progress.
fn run_visibly(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let status = command
        .stdout(io::stderr())
        .status()
        .map_err(|e| format!("{shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown}: {status}"))
    }
}

fn spawn_synapse(python: &Path, config: &Path, dir: &Path) -> Result<std::process::Child, String> {
    let stdio = File::create(dir.join("stdio.log")).map_err(|e| format!("stdio.log: {e}"))?;
    let stdio_err = stdio.try_clone().map_err(|e| format!("stdio.log: {e}"))?;
    let parent = std::process::id();
    let mut command = Command::new(python);
    command
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdio)
        .stderr(stdio_err);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then no signal would come.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", python.display()))
}

/// Writes `homeserver.yaml` (as JSON, which YAML reads) and its logging config into `dir`.
fn write_config(dir: &Path, port: u16) -> Result<PathBuf, String> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let unlimited = || json!({"per_second": 1_000_000, "burst_count": 1_000_000});
    let config = json!({
        "server_name": SERVER_NAME,
        "public_baseurl": format!("http://127.0.0.1:{port}/"),
        // Login answers then carry `well_known`, which a proxy in front must rewrite.
        "serve_client_wellknown": true,
        "listeners": [{
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": false,
            "x_forwarded": false,
            "resources": [{"names": ["client"], "compress": false}],
        }],
        "database": {"name": "sqlite3", "args": {"database": path("homeserver.db")}},
        "log_config": path("log.yaml"),
        "media_store_path": path("media"),
        // Generated at first start (Synapse's default --generate-missing-and-run).
        "signing_key_path": path("signing.key"),
        // Otherwise derived from the signing key, with a warning on stdout.
        "macaroon_secret_key": "slidesync-tests-only",
        "report_stats": false,
        // The default (12) costs ~0.25 s of CPU per register and login.
        "bcrypt_rounds": 4,
        "enable_registration": true,
        "enable_registration_without_verification": true,
        "presence": {"enabled": false},
        // No federation: no key servers to ask, and no warning about matrix.org.
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        // Every limiter in synapse/config/ratelimiting.py. Some defaults would fail
        // e2e tests quickly: rc_room_creation allows a burst of 10 rooms, then one per
        // minute; rc_invites.per_user 5; rc_login.account 5.
        "rc_message": unlimited(),
        "rc_registration": unlimited(),
        "rc_registration_token_validity": unlimited(),
        "rc_login": {
            "address": unlimited(),
            "account": unlimited(),
            "failed_attempts": unlimited(),
        },
        "rc_admin_redaction": unlimited(),
        "rc_joins": {"local": unlimited(), "remote": unlimited()},
        "rc_joins_per_room": unlimited(),
        "rc_key_requests": unlimited(),
        "rc_3pid_validation": unlimited(),
        "rc_invites": {
            "per_room": unlimited(),
            "per_user": unlimited(),
            "per_issuer": unlimited(),
        },
        "rc_third_party_invite": unlimited(),
        "rc_media_create": unlimited(),
        "rc_presence": {"per_user": unlimited()},
        "rc_delayed_event_mgmt": unlimited(),
        "rc_room_creation": unlimited(),
        "rc_reports": unlimited(),
        "rc_user_directory": unlimited(),
        "rc_profile": unlimited(),
    });
    let log_config = json!({
        "version": 1,
        "formatters": {"precise": {
            "format": "%(asctime)s %(levelname)s %(name)s:%(lineno)d %(request)s %(message)s",
        }},
        "handlers": {"file": {
            "class": "logging.FileHandler",
            "formatter": "precise",
            "filename": path("homeserver.log"),
        }},
        "root": {"level": "WARNING", "handlers": ["file"]},
        "disable_existing_loggers": false,
    });
    let write = |name: &str, value: &Value| {
        let text = sonic_rs::to_string_pretty(value).expect("config serializes");
        fs::write(dir.join(name), text).map_err(|e| format!("write {name}: {e}"))
    };
    write("log.yaml", &log_config)?;
    write("homeserver.yaml", &config)?;
    Ok(dir.join("homeserver.yaml"))
}

/// A port that was free a moment ago. Another process could take it before Synapse
/// binds; then Synapse exits at once and the startup error shows "Address in use".
fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("find a free port: {e}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| format!("find a free port: {e}"))
}

/// Removes temp dirs of earlier test processes (Synapse is SIGKILLed with the process,
/// so nothing else cleans them up). A dir is stale when its pid no longer runs.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn log_tails(dir: &Path) -> String {
    ["homeserver.log", "stdio.log"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let text = fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            format!("--- last lines of {} ---\n{tail}", path.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Unique within this process (and, with the pid, across processes).
fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Synapse {
    /// Registers a new user `<prefix>-<pid>-<n>` (lowercased) with [`TEST_PASSWORD`].
    pub async fn register(&self, localpart_prefix: &str) -> TestUser {
        let localpart = format!(
            "{}-{}-{}",
            localpart_prefix.to_lowercase(),
            std::process::id(),
            unique()
        );
        let body = json!({
            "username": localpart,
            "password": TEST_PASSWORD,
            "auth": {"type": "m.login.dummy"},
            "initial_device_display_name": "slidesync test",
        });
        let answer = self
            .call(
                "register",
                Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(&body),
            )
            .await;
        Self::user_from(&answer, "register")
    }

    /// Logs `user` in again: a second device of the same user.
    pub async fn login(&self, user: &TestUser, password: &str) -> TestUser {
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": password,
            "initial_device_display_name": "slidesync test",
        });
        let answer = self
            .call(
                "login",
                Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(&body),
            )
            .await;
        Self::user_from(&answer, "login")
    }

    /// Creates a room with `body` as the `/createRoom` request; returns its id.
    pub async fn create_room(&self, user: &TestUser, body: Value) -> String {
        let answer = self
            .call(
                "create room",
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(user),
                Some(&body),
            )
            .await;
        Self::string_field(&answer, "room_id", "create room")
    }

    /// Sends an `m.text` message; returns its event id.
    pub async fn send_text(&self, user: &TestUser, room_id: &str, text: &str) -> String {
        self.send_text_as(user, room_id, text, &Self::txn_id())
            .await
    }

    /// Sends an `m.text` message with the client's transaction ID `txn_id`; returns its
    /// event id.
    pub async fn send_text_as(
        &self,
        user: &TestUser,
        room_id: &str,
        text: &str,
        txn_id: &str,
    ) -> String {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
            encode(room_id),
            encode(txn_id)
        );
        let body = json!({"msgtype": "m.text", "body": text});
        let answer = self
            .call("send text", Method::PUT, &path, Some(user), Some(&body))
            .await;
        Self::string_field(&answer, "event_id", "send text")
    }

    /// Joins a room by id or alias.
    pub async fn join(&self, user: &TestUser, room_id_or_alias: &str) {
        let path = format!("/_matrix/client/v3/join/{}", encode(room_id_or_alias));
        self.call("join", Method::POST, &path, Some(user), Some(&json!({})))
            .await;
    }

    pub async fn leave(&self, user: &TestUser, room_id: &str) {
        let path = format!("/_matrix/client/v3/rooms/{}/leave", encode(room_id));
        self.call("leave", Method::POST, &path, Some(user), Some(&json!({})))
            .await;
    }

    /// `by` removes `user_id` from the room (a kick: a leave someone else sent).
    pub async fn kick(&self, by: &TestUser, room_id: &str, user_id: &str) {
        let path = format!("/_matrix/client/v3/rooms/{}/kick", encode(room_id));
        let body = json!({"user_id": user_id});
        self.call("kick", Method::POST, &path, Some(by), Some(&body))
            .await;
    }

    pub async fn invite(&self, inviter: &TestUser, room_id: &str, invitee_user_id: &str) {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", encode(room_id));
        let body = json!({"user_id": invitee_user_id});
        self.call("invite", Method::POST, &path, Some(inviter), Some(&body))
            .await;
    }

    /// Sets `m.room.name`; returns the state event's id.
    pub async fn set_room_name(&self, user: &TestUser, room_id: &str, name: &str) -> String {
        self.send_state(user, room_id, "m.room.name", "", json!({"name": name}))
            .await
    }

    /// Sends a state event; returns its event id.
    pub async fn send_state(
        &self,
        user: &TestUser,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> String {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{}/{}",
            encode(room_id),
            encode(event_type),
            encode(state_key)
        );
        let answer = self
            .call("send state", Method::PUT, &path, Some(user), Some(&content))
            .await;
        Self::string_field(&answer, "event_id", "send state")
    }

    /// `PUT /sendToDevice`: `messages` is `{user_id: {device_id: content}}`.
    pub async fn send_to_device(&self, sender: &TestUser, event_type: &str, messages: Value) {
        let path = format!(
            "/_matrix/client/v3/sendToDevice/{}/{}",
            encode(event_type),
            Self::txn_id()
        );
        let body = json!({ "messages": messages });
        self.call(
            "send to device",
            Method::PUT,
            &path,
            Some(sender),
            Some(&body),
        )
        .await;
    }

    /// `POST /keys/upload` for the user's device: its identity keys, `one_time_keys`
    /// one-time keys and a fallback key. Returns the one-time-key counts Synapse reports.
    /// The keys are made up: Synapse stores them without checking signatures.
    pub async fn upload_keys(&self, user: &TestUser, one_time_keys: usize) -> Value {
        let device = &user.device_id;
        let key = |n: usize| format!("{:0>43}", format!("{device}{n}")).replace('-', "A");
        let mut own_signature = json!({});
        own_signature[format!("ed25519:{device}").as_str()] = json!("c2ln");
        let mut signatures = json!({});
        signatures[user.user_id.as_str()] = own_signature;
        let mut otks = json!({});
        for n in 0..one_time_keys {
            otks[format!("signed_curve25519:OTK{n}").as_str()] =
                json!({"key": key(n), "signatures": signatures.clone()});
        }
        let mut keys = json!({});
        keys[format!("curve25519:{device}").as_str()] = json!(key(1000));
        keys[format!("ed25519:{device}").as_str()] = json!(key(1001));
        let mut fallback = json!({});
        fallback[format!("signed_curve25519:FB{device}").as_str()] =
            json!({"key": key(2000), "fallback": true, "signatures": signatures.clone()});
        let body = json!({
            "device_keys": {
                "user_id": user.user_id,
                "device_id": device,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": keys,
                "signatures": signatures,
            },
            "one_time_keys": otks,
            "fallback_keys": fallback,
        });
        let answer = self
            .call(
                "upload keys",
                Method::POST,
                "/_matrix/client/v3/keys/upload",
                Some(user),
                Some(&body),
            )
            .await;
        answer["one_time_key_counts"].clone()
    }

    /// One client-API call that must succeed; returns the JSON answer. A fresh client
    /// per call: a pooled connection would belong to the runtime of an earlier test.
    pub async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        user: Option<&TestUser>,
        body: Option<&Value>,
    ) -> Value {
        let url = format!("{}{path}", self.base_url);
        let token = user.map(|u| u.access_token.as_str());
        let response = HttpClient::new()
            .request(method.clone(), &url, token, body)
            .await;
        assert!(
            response.status.is_success(),
            "{what} failed: {method} {path} answered {response:?} (Synapse log: {})",
            self.log_path.display()
        );
        response.json()
    }

    fn user_from(answer: &Value, what: &str) -> TestUser {
        TestUser {
            user_id: Self::string_field(answer, "user_id", what),
            access_token: Self::string_field(answer, "access_token", what),
            device_id: Self::string_field(answer, "device_id", what),
        }
    }

    fn string_field(answer: &Value, field: &str, what: &str) -> String {
        match answer[field].as_str() {
            Some(value) => value.to_owned(),
            None => panic!("{what}: no string `{field}` in Synapse's answer {answer:?}"),
        }
    }

    fn txn_id() -> String {
        format!("slidesync-{}-{}", std::process::id(), unique())
    }
}
