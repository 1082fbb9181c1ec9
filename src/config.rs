//! Settings.
//!
//! Every setting is an environment variable with the Go proxy's `SYNCV3_*` name (so an
//! operator can switch binaries without touching the deployment) and a command-line flag
//! that overrides it. [`parse`] is a pure function of the arguments and a map of the
//! environment: tests pass maps and never touch the process environment.
//!
//! Failing fast is the point: every problem is one [`ConfigError`] line that names the
//! setting, shows the value it got (never `SYNCV3_SECRET`; database passwords redacted)
//! and says what to do.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::ops::logging::LogFormat;
pub use crate::ops::otlp::OtlpTarget;

/// Where the homeserver's client API is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    /// Scheme `http` or `https`, no trailing slash, no query.
    Http(http::Uri),
    /// A unix socket; requests go over it as plain HTTP.
    Unix(PathBuf),
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `Uri`'s own Display adds a `/` path to a bare authority; callers append
            // `/_matrix/...` to this, so print the base without it.
            ServerAddr::Http(uri) => {
                let scheme = uri.scheme_str().unwrap_or("https");
                let authority = uri.authority().map_or("", |a| a.as_str());
                write!(
                    f,
                    "{scheme}://{authority}{}",
                    uri.path().trim_end_matches('/')
                )
            }
            ServerAddr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Where the proxy listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindAddr {
    Tcp(SocketAddr),
    /// A unix socket path; a stale socket file there is replaced.
    Unix(PathBuf),
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(addr) => write!(f, "{addr}"),
            BindAddr::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The certificate chain and private key for HTTPS, both PEM files that existed at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the proxy needs to start.
#[derive(Clone)]
pub struct Config {
    pub server: ServerAddr,
    pub db: Db,
    /// Where the embedded database and a generated secret are kept.
    pub data_dir: PathBuf,
    /// Key material for token encryption; never printed. `None`: generate one and keep it
    /// beside the database.
    pub secret: Option<String>,
    pub bind: BindAddr,
    pub tls: Option<TlsFiles>,
    pub log_level: tracing::Level,
    /// Largest database pool; 0 means the pool's default.
    pub max_db_conn: u32,
    /// Timeout of upstream requests other than a poller's first `/sync`.
    pub http_timeout: Duration,
    /// Timeout of a poller's first `/sync`, which can take minutes on a big account.
    pub http_initial_timeout: Duration,
    /// Where to serve `/metrics` and `/health`; off when unset.
    pub prom: Option<SocketAddr>,
    /// Where to serve `/debug/pprof/*`; off when unset.
    pub pprof: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// Where to send traces; off when unset.
    pub otlp: Option<OtlpTarget>,
    /// The URL clients reach slidesync at, no trailing slash; `None`: from each
    /// request's `Host`.
    pub public_url: Option<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("db", &self.db)
            .field("data_dir", &self.data_dir)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("bind", &self.bind)
            .field("tls", &self.tls)
            .field("log_level", &self.log_level)
            .field("max_db_conn", &self.max_db_conn)
            .field("http_timeout", &self.http_timeout)
            .field("http_initial_timeout", &self.http_initial_timeout)
            .field("prom", &self.prom)
            .field("pprof", &self.pprof)
            .field("log_format", &self.log_format)
            .field("otlp", &self.otlp)
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// Which store holds the proxy's data.
#[derive(Clone, PartialEq, Eq)]
pub enum Db {
    /// A Postgres URL; may hold a password, so print it through [`redact_db_url`] (the
    /// `Debug` form does).
    Postgres(String),
    /// The embedded store: an SQLite file.
    Sqlite(PathBuf),
}

/// The file name of the embedded database in `SYNCV3_DATA_DIR`.
pub const SQLITE_FILE: &str = "slidesync.db";

impl Db {
    /// `SYNCV3_DB` as given: a Postgres URL or `sqlite://PATH`.
    pub fn parse(raw: &str) -> Result<Db, String> {
        let lower = raw.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(Db::Postgres(raw.to_owned()));
        }
        if lower.starts_with("sqlite://") {
            let path = &raw["sqlite://".len()..];
            if path.is_empty() {
                return Err("sqlite:// names no file".to_owned());
            }
            // A path only: what follows `?` would become part of the file's name, and an
            // in-memory database keeps nothing across a restart.
            if path.contains('?') || path.starts_with(":memory:") {
                return Err(
                    "sqlite:// takes a file path only, with no ?options and not :memory:"
                        .to_owned(),
                );
            }
            return Ok(Db::Sqlite(PathBuf::from(path)));
        }
        Err(if raw.contains('=') && !raw.contains("://") {
            "a libpq key=value string, not a URL".to_owned()
        } else {
            "neither a Postgres URL nor sqlite://PATH".to_owned()
        })
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Db::Postgres(url) => write!(f, "{}", redact_db_url(url)),
            Db::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
        }
    }
}

/// What `slidesync import-go` needs: the Go proxy's database, and slidesync's store.
#[derive(Clone)]
pub struct ImportConfig {
    /// The Go proxy's Postgres URL; may hold a password, so print it through
    /// [`redact_db_url`].
    pub from: String,
    pub db: Db,
    /// The Go proxy's `SYNCV3_SECRET`: its tokens are re-stored under it, so slidesync
    /// must run with it too.
    pub secret: String,
    pub log_level: tracing::Level,
    pub log_format: LogFormat,
    pub max_db_conn: u32,
}

impl fmt::Debug for ImportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportConfig")
            .field("from", &redact_db_url(&self.from))
            .field("db", &self.db)
            .field("secret", &"***")
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("max_db_conn", &self.max_db_conn)
            .finish()
    }
}

/// The subcommand that imports a Go proxy's database.
pub const IMPORT_GO: &str = "import-go";

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Config>),
    /// `slidesync import-go ...`.
    ImportGo(Box<ImportConfig>),
    /// `--help`: the text to print on stdout.
    Help(String),
    /// `--version`: the text to print on stdout.
    Version(String),
}

/// One row of the settings table: what `--help` prints and what errors name.
#[derive(Debug)]
pub struct Setting {
    pub env: &'static str,
    /// Without the leading `--`.
    pub flag: &'static str,
    /// Placeholder for the value in `--help`.
    pub value_name: &'static str,
    pub default: Fallback,
    pub meaning: &'static str,
    /// What to do about a missing or bad value; ends every error about this setting.
    pub fix: &'static str,
}

/// What applies when a setting is not given.
#[derive(Debug)]
pub enum Fallback {
    Required,
    Unset,
    Value(&'static str),
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (--{})", self.env, self.flag)
    }
}

static SERVER: Setting = Setting {
    env: "SYNCV3_SERVER",
    flag: "server",
    value_name: "URL|PATH",
    default: Fallback::Required,
    meaning: "The homeserver's client API base URL (http:// or https://), or the path of its unix socket (starts with /).",
    fix: "set it to the homeserver's client API base URL like https://matrix.example.org, or a unix socket path starting with /",
};

static DB: Setting = Setting {
    env: "SYNCV3_DB",
    flag: "db",
    value_name: "URL",
    default: Fallback::Unset,
    meaning: "The store: a Postgres URL (postgres:// or postgresql://) for production or several nodes, or sqlite://PATH. Unset: the embedded store, an SQLite file in SYNCV3_DATA_DIR.",
    fix: "set it to a Postgres URL like postgresql://user:password@localhost/syncv3, to sqlite://PATH, or unset it for the embedded store",
};

static SECRET: Setting = Setting {
    env: "SYNCV3_SECRET",
    flag: "secret",
    value_name: "SECRET",
    default: Fallback::Unset,
    meaning: "Key for encrypting stored access tokens; must never change for the life of the database. Required with a Postgres SYNCV3_DB. Unset with the embedded store: a random one is generated on first start and kept beside the database (mode 0600).",
    fix: "set it to a random string, e.g. the output of `openssl rand -hex 32`, and keep it for the life of the database",
};

static DATA_DIR: Setting = Setting {
    env: "SYNCV3_DATA_DIR",
    flag: "data-dir",
    value_name: "PATH",
    default: Fallback::Value("./slidesync-data"),
    meaning: "Directory of the embedded store's file and, with SYNCV3_DB a Postgres URL, of the generated secret; created if missing.",
    fix: "set it to a directory slidesync may create and write",
};

static BINDADDR: Setting = Setting {
    env: "SYNCV3_BINDADDR",
    flag: "bindaddr",
    value_name: "ADDR|PATH",
    default: Fallback::Value("0.0.0.0:8008"),
    meaning: "Where to listen: host:port, or a unix socket path starting with /.",
    fix: "set it to host:port like 0.0.0.0:8008, or a unix socket path starting with /",
};

static TLS_CERT: Setting = Setting {
    env: "SYNCV3_TLS_CERT",
    flag: "tls-cert",
    value_name: "FILE",
    default: Fallback::Unset,
    meaning: "PEM certificate chain; with SYNCV3_TLS_KEY, serve HTTPS instead of HTTP.",
    fix: "set it to the path of a PEM certificate chain file, or unset both SYNCV3_TLS_CERT and SYNCV3_TLS_KEY to serve plain HTTP",
};

static TLS_KEY: Setting = Setting {
    env: "SYNCV3_TLS_KEY",
    flag: "tls-key",
    value_name: "FILE",
    default: Fallback::Unset,
    meaning: "PEM private key of the certificate in SYNCV3_TLS_CERT.",
    fix: "set it to the path of the PEM private key file, or unset both SYNCV3_TLS_CERT and SYNCV3_TLS_KEY to serve plain HTTP",
};

static LOG_LEVEL: Setting = Setting {
    env: "SYNCV3_LOG_LEVEL",
    flag: "log-level",
    value_name: "LEVEL",
    default: Fallback::Value("info"),
    meaning: "Least severe log level shown: trace, debug, info, warn or error (RUST_LOG, when set, overrides it).",
    fix: "set it to one of trace, debug, info, warn, error",
};

static MAX_DB_CONN: Setting = Setting {
    env: "SYNCV3_MAX_DB_CONN",
    flag: "max-db-conn",
    value_name: "N",
    default: Fallback::Value("0"),
    meaning: "Most database connections to hold open; 0 means the pool's default.",
    fix: "set it to a whole number of connections, or 0 for the pool's default",
};

static HTTP_TIMEOUT_SECS: Setting = Setting {
    env: "SYNCV3_HTTP_TIMEOUT_SECS",
    flag: "http-timeout-secs",
    value_name: "SECS",
    default: Fallback::Value("300"),
    meaning: "Timeout in seconds of requests to the homeserver (long-polls, whoami, versions).",
    fix: "set it to a whole number of seconds greater than 0, like 300",
};

static HTTP_INITIAL_TIMEOUT_SECS: Setting = Setting {
    env: "SYNCV3_HTTP_INITIAL_TIMEOUT_SECS",
    flag: "http-initial-timeout-secs",
    value_name: "SECS",
    default: Fallback::Value("1800"),
    meaning:
        "Timeout in seconds of a device's first /sync, which can take minutes on a big account, and the longest a request waits for it.",
    fix: "set it to a whole number of seconds greater than 0, like 1800",
};

static PROM: Setting = Setting {
    env: "SYNCV3_PROM",
    flag: "prom",
    value_name: "HOST:PORT",
    default: Fallback::Unset,
    meaning: "Serve Prometheus metrics on /metrics and a health check on /health at this address, apart from the public listener.",
    fix: "set it to host:port like 127.0.0.1:2112, or leave it unset to serve no metrics",
};

static PPROF: Setting = Setting {
    env: "SYNCV3_PPROF",
    flag: "pprof",
    value_name: "HOST:PORT",
    default: Fallback::Unset,
    meaning: "Serve CPU profiles, flame graphs and a memory summary on /debug/pprof/ at this address, apart from the public listener.",
    fix: "set it to host:port like 127.0.0.1:6060, or leave it unset to serve no profiles",
};

static LOG_FORMAT: Setting = Setting {
    env: "SYNCV3_LOG_FORMAT",
    flag: "log-format",
    value_name: "FORMAT",
    default: Fallback::Value("text"),
    meaning: "Log lines as key=value text, or json for one JSON object per line.",
    fix: "set it to text or json",
};

static OTLP_URL: Setting = Setting {
    env: "SYNCV3_OTLP_URL",
    flag: "otlp-url",
    value_name: "URL",
    default: Fallback::Unset,
    meaning: "Send OpenTelemetry traces (requests, polls, batch commits) over OTLP/HTTP to this collector: scheme and host only, traces go to /v1/traces.",
    fix: "set it to the collector's base URL like http://127.0.0.1:4318 (no path), or leave it unset to send no traces",
};

static OTLP_USERNAME: Setting = Setting {
    env: "SYNCV3_OTLP_USERNAME",
    flag: "otlp-username",
    value_name: "NAME",
    default: Fallback::Unset,
    meaning: "Basic-auth user name for the trace collector; needs SYNCV3_OTLP_PASSWORD.",
    fix: "set both SYNCV3_OTLP_USERNAME and SYNCV3_OTLP_PASSWORD, or neither",
};

static OTLP_PASSWORD: Setting = Setting {
    env: "SYNCV3_OTLP_PASSWORD",
    flag: "otlp-password",
    value_name: "PASSWORD",
    default: Fallback::Unset,
    meaning: "Basic-auth password for the trace collector; needs SYNCV3_OTLP_USERNAME.",
    fix: "set both SYNCV3_OTLP_USERNAME and SYNCV3_OTLP_PASSWORD, or neither",
};

static PUBLIC_URL: Setting = Setting {
    env: "SYNCV3_PUBLIC_URL",
    flag: "public-url",
    value_name: "URL",
    default: Fallback::Unset,
    meaning: "The URL clients use to reach slidesync as their homeserver: put in the well_known of /login and /register answers and in /.well-known/matrix/client as the sliding sync proxy. Unset: the scheme slidesync serves and the request's Host.",
    fix: "set it to the http:// or https:// URL clients reach slidesync at, like https://matrix.example.org, or leave it unset to use each request's Host",
};
static FROM: Setting = Setting {
    env: "SYNCV3_IMPORT_FROM",
    flag: "from",
    value_name: "URL",
    default: Fallback::Required,
    meaning: "The Go proxy's Postgres database (postgres:// or postgresql://) to import from; only read.",
    fix: "set it to the Go proxy's SYNCV3_DB, a Postgres URL like postgresql://user:password@localhost/syncv3",
};

/// The settings of `slidesync import-go`, in the order its `--help` lists them.
pub static IMPORT_SETTINGS: [&Setting; 7] = [
    &FROM,
    &DB,
    &DATA_DIR,
    &SECRET,
    &LOG_LEVEL,
    &MAX_DB_CONN,
    &LOG_FORMAT,
];

/// Every setting, in the order `--help` lists them.
pub static SETTINGS: [&Setting; 18] = [
    &SERVER,
    &DB,
    &DATA_DIR,
    &SECRET,
    &BINDADDR,
    &TLS_CERT,
    &TLS_KEY,
    &LOG_LEVEL,
    &MAX_DB_CONN,
    &HTTP_TIMEOUT_SECS,
    &HTTP_INITIAL_TIMEOUT_SECS,
    &PROM,
    &PPROF,
    &LOG_FORMAT,
    &OTLP_URL,
    &OTLP_USERNAME,
    &OTLP_PASSWORD,
    &PUBLIC_URL,
];

/// Why the settings cannot be used. Display is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting has no value (an empty value counts as none).
    #[error("{setting} is not set: {}", .setting.fix)]
    Missing { setting: &'static Setting },
    /// A setting's value cannot be used; `shown` is safe to print.
    #[error("{setting} is {shown:?}: {problem}; {}", .setting.fix)]
    Invalid {
        setting: &'static Setting,
        shown: String,
        problem: String,
    },
    /// Only one of the TLS pair is set.
    #[error("{missing} is not set but {present} is: set both to serve HTTPS, or neither to serve plain HTTP")]
    TlsHalf {
        present: &'static Setting,
        missing: &'static Setting,
    },
    /// A Postgres database without an explicit secret: a generated one would be each
    /// node's own, and no node could read the tokens the others stored.
    #[error("{secret} is not set but {db} names a Postgres database: every proxy on that database must use the same secret; set it to a random string, e.g. the output of `openssl rand -hex 32`, and keep it for the life of the database")]
    SecretRequired {
        secret: &'static Setting,
        db: &'static Setting,
    },
    /// A flag came last, or was followed by another flag, instead of by its value.
    #[error("{setting} was given as a flag without a value: write --{} VALUE or --{}=VALUE", .setting.flag, .setting.flag)]
    FlagWithoutValue { setting: &'static Setting },
    /// A flag that is not in the settings table.
    #[error("unknown flag {flag:?}: run {command} --help to list the settings")]
    UnknownFlag { flag: String, command: &'static str },
    /// A bare word where a flag was expected. Not echoed: it may be a misplaced secret.
    #[error("unexpected argument at position {position}: give settings as --flag VALUE, --flag=VALUE or SYNCV3_* environment variables; run {command} --help to list them")]
    UnexpectedArgument {
        position: usize,
        command: &'static str,
    },
    /// `import-go` without the Go proxy's secret: nothing it imports could be read.
    #[error("{secret} is not set: import-go needs the Go proxy's secret to decrypt its tokens; set it to the value the Go proxy ran with, and keep it set when slidesync runs on the imported database")]
    ImportSecretRequired { secret: &'static Setting },
}

/// The command line's flags, or a request for help or the version.
enum Flags {
    Given(HashMap<&'static str, String>),
    Help,
    Version,
}

/// Reads `--flag VALUE` and `--flag=VALUE` pairs of the given settings. `skipped` is the
/// number of arguments before `args`, so positions in errors count from the program name.
fn read_flags(
    args: &[String],
    settings: &[&'static Setting],
    command: &'static str,
    skipped: usize,
) -> Result<Flags, ConfigError> {
    let mut flags: HashMap<&'static str, String> = HashMap::new();
    let mut args = args.iter().enumerate();
    while let Some((index, arg)) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Flags::Help),
            "-V" | "--version" => return Ok(Flags::Version),
            _ => {}
        }
        let Some(body) = arg.strip_prefix("--") else {
            if arg.starts_with('-') {
                return Err(ConfigError::UnknownFlag {
                    flag: arg.clone(),
                    command,
                });
            }
            return Err(ConfigError::UnexpectedArgument {
                position: skipped + index + 1,
                command,
            });
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let Some(setting) = settings.iter().copied().find(|s| s.flag == name) else {
            // Only the name: a misspelt `--secrt=...` must not echo the secret.
            return Err(ConfigError::UnknownFlag {
                flag: format!("--{name}"),
                command,
            });
        };
        let value = match inline {
            Some(value) => value.to_owned(),
            None => match args.next() {
                Some((_, value)) if !value.starts_with("--") => value.clone(),
                _ => return Err(ConfigError::FlagWithoutValue { setting }),
            },
        };
        flags.insert(setting.flag, value);
    }
    Ok(Flags::Given(flags))
}

/// Reads the settings from `args` (without the program name) and `env`; a flag wins over
/// its environment variable.
pub fn parse(args: &[String], env: &HashMap<String, String>) -> Result<Parsed, ConfigError> {
    if let Some((first, rest)) = args.split_first() {
        if first == IMPORT_GO {
            let command = "slidesync import-go";
            return Ok(match read_flags(rest, &IMPORT_SETTINGS, command, 1)? {
                Flags::Given(flags) => {
                    Parsed::ImportGo(Box::new(Values { flags, env }.import_config()?))
                }
                Flags::Help => Parsed::Help(import_help_text()),
                Flags::Version => Parsed::Version(version_text()),
            });
        }
    }
    Ok(match read_flags(args, &SETTINGS, "slidesync", 0)? {
        Flags::Given(flags) => Parsed::Run(Box::new(Values { flags, env }.config()?)),
        Flags::Help => Parsed::Help(help_text()),
        Flags::Version => Parsed::Version(version_text()),
    })
}

/// The raw values: flags first, then the environment. Empty means unset, as in the Go
/// proxy, so `-e SYNCV3_BINDADDR=` in a container falls back to the default.
struct Values<'a> {
    flags: HashMap<&'static str, String>,
    env: &'a HashMap<String, String>,
}

impl Values<'_> {
    fn get(&self, setting: &'static Setting) -> Option<&str> {
        self.flags
            .get(setting.flag)
            .or_else(|| self.env.get(setting.env))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The value, or the setting's default, or a [`ConfigError::Missing`].
    fn get_or_default(&self, setting: &'static Setting) -> Result<&str, ConfigError> {
        match (self.get(setting), &setting.default) {
            (Some(value), _) => Ok(value),
            (None, Fallback::Value(default)) => Ok(default),
            (None, Fallback::Required | Fallback::Unset) => Err(ConfigError::Missing { setting }),
        }
    }

    fn config(&self) -> Result<Config, ConfigError> {
        let server = self.get_or_default(&SERVER)?;
        let server = parse_server(server).map_err(|problem| invalid(&SERVER, server, problem))?;

        let (data_dir, db) = self.store()?;

        let secret = self.get(&SECRET).map(str::to_owned);
        if secret.is_none() && matches!(db, Db::Postgres(_)) {
            return Err(ConfigError::SecretRequired {
                secret: &SECRET,
                db: &DB,
            });
        }

        let bind = self.get_or_default(&BINDADDR)?;
        let bind = parse_bind(bind).map_err(|problem| invalid(&BINDADDR, bind, problem))?;

        let tls = match (self.get(&TLS_CERT), self.get(&TLS_KEY)) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::TlsHalf {
                    present: &TLS_CERT,
                    missing: &TLS_KEY,
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::TlsHalf {
                    present: &TLS_KEY,
                    missing: &TLS_CERT,
                })
            }
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: existing_file(&TLS_CERT, cert)?,
                key: existing_file(&TLS_KEY, key)?,
            }),
        };

        let (log_level, log_format) = self.logging()?;
        let max_db_conn = self.max_db_conn()?;

        let http_timeout = self.seconds(&HTTP_TIMEOUT_SECS)?;
        let http_initial_timeout = self.seconds(&HTTP_INITIAL_TIMEOUT_SECS)?;

        let prom = self.tcp(&PROM)?;
        let pprof = self.tcp(&PPROF)?;
        if let (Some(prom), Some(pprof)) = (prom, pprof) {
            if prom == pprof {
                return Err(invalid(
                    &PPROF,
                    &pprof.to_string(),
                    "the same address as SYNCV3_PROM; each needs its own port",
                ));
            }
        }

        let otlp = match self.get(&OTLP_URL) {
            None => None,
            Some(url) => Some(OtlpTarget {
                base: parse_otlp_url(url).map_err(|problem| ConfigError::Invalid {
                    setting: &OTLP_URL,
                    shown: redact_db_url(url),
                    problem,
                })?,
                basic_auth: match (self.get(&OTLP_USERNAME), self.get(&OTLP_PASSWORD)) {
                    (None, None) => None,
                    (Some(user), Some(password)) => Some((user.to_owned(), password.to_owned())),
                    (Some(_), None) => {
                        return Err(ConfigError::Missing {
                            setting: &OTLP_PASSWORD,
                        })
                    }
                    (None, Some(_)) => {
                        return Err(ConfigError::Missing {
                            setting: &OTLP_USERNAME,
                        })
                    }
                },
            }),
        };

        let public_url = match self.get(&PUBLIC_URL) {
            None => None,
            Some(raw) if raw.starts_with('/') => {
                return Err(invalid(&PUBLIC_URL, raw, "a path, not a URL"))
            }
            Some(raw) => Some(
                parse_server(raw)
                    .map_err(|problem| invalid(&PUBLIC_URL, raw, problem))?
                    .to_string(),
            ),
        };

        Ok(Config {
            server,
            db,
            data_dir,
            secret,
            bind,
            tls,
            log_level,
            max_db_conn,
            http_timeout,
            http_initial_timeout,
            prom,
            pprof,
            log_format,
            otlp,
            public_url,
        })
    }

    fn import_config(&self) -> Result<ImportConfig, ConfigError> {
        let from = self.get_or_default(&FROM)?;
        let from = match Db::parse(from) {
            Ok(Db::Postgres(url)) => url,
            _ => {
                return Err(ConfigError::Invalid {
                    setting: &FROM,
                    shown: redact_db_url(from),
                    problem: "not a Postgres URL (the Go proxy ran only on Postgres)".to_owned(),
                })
            }
        };
        let (_, db) = self.store()?;
        let secret = self
            .get(&SECRET)
            .ok_or(ConfigError::ImportSecretRequired { secret: &SECRET })?
            .to_owned();
        let (log_level, log_format) = self.logging()?;
        Ok(ImportConfig {
            from,
            db,
            secret,
            log_level,
            log_format,
            max_db_conn: self.max_db_conn()?,
        })
    }

    /// `SYNCV3_DATA_DIR` and the store `SYNCV3_DB` names in it or elsewhere.
    fn store(&self) -> Result<(PathBuf, Db), ConfigError> {
        let data_dir = PathBuf::from(self.get_or_default(&DATA_DIR)?);
        let db = match self.get(&DB) {
            Some(db) => Db::parse(db).map_err(|problem| ConfigError::Invalid {
                setting: &DB,
                shown: redact_db_url(db),
                problem,
            })?,
            None => Db::Sqlite(data_dir.join(SQLITE_FILE)),
        };
        Ok((data_dir, db))
    }

    fn logging(&self) -> Result<(tracing::Level, LogFormat), ConfigError> {
        let level = self.get_or_default(&LOG_LEVEL)?;
        let log_level =
            parse_level(level).ok_or_else(|| invalid(&LOG_LEVEL, level, "unknown log level"))?;
        let format = self.get_or_default(&LOG_FORMAT)?;
        let log_format = match format.to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(invalid(&LOG_FORMAT, format, "unknown log format")),
        };
        Ok((log_level, log_format))
    }

    fn max_db_conn(&self) -> Result<u32, ConfigError> {
        let max = self.get_or_default(&MAX_DB_CONN)?;
        max.parse::<u32>()
            .map_err(|_| invalid(&MAX_DB_CONN, max, "not a non-negative whole number"))
    }

    /// An optional host:port; a unix socket path is refused (these listeners are for
    /// scrapers and profilers on the network).
    fn tcp(&self, setting: &'static Setting) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(raw) = self.get(setting) else {
            return Ok(None);
        };
        match parse_bind(raw) {
            Ok(BindAddr::Tcp(addr)) => Ok(Some(addr)),
            Ok(BindAddr::Unix(_)) => {
                Err(invalid(setting, raw, "a unix socket is not supported here"))
            }
            Err(problem) => Err(invalid(setting, raw, problem)),
        }
    }

    fn seconds(&self, setting: &'static Setting) -> Result<Duration, ConfigError> {
        let raw = self.get_or_default(setting)?;
        match raw.parse::<u64>() {
            Ok(0) => Err(invalid(
                setting,
                raw,
                "a timeout of 0 would fail every request",
            )),
            Ok(secs) => Ok(Duration::from_secs(secs)),
            Err(_) => Err(invalid(setting, raw, "not a whole number of seconds")),
        }
    }
}

fn invalid(setting: &'static Setting, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        shown: value.to_owned(),
        problem: problem.into(),
    }
}

fn parse_server(raw: &str) -> Result<ServerAddr, String> {
    if raw.starts_with('/') {
        return Ok(ServerAddr::Unix(PathBuf::from(raw)));
    }
    let lower = raw.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(match raw.split_once("://") {
            Some((scheme, _)) => format!("the scheme {scheme:?} is neither http nor https"),
            None => "not a URL".to_owned(),
        });
    }
    let uri: http::Uri = raw
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("not a valid URL ({e})"))?;
    // `https://` trims to `https:`, which parses as a bare host: require the scheme back.
    if uri.scheme().is_none() || uri.host().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    if uri.query().is_some() {
        return Err("a base URL has no query string".to_owned());
    }
    Ok(ServerAddr::Http(uri))
}

/// The collector's base: an http(s) URL as for the homeserver, but with no path, as the
/// Go proxy required (the exporter appends `/v1/traces`).
fn parse_otlp_url(raw: &str) -> Result<String, String> {
    match parse_server(raw)? {
        ServerAddr::Unix(_) => Err("not a URL; the collector is reached over HTTP".to_owned()),
        ServerAddr::Http(uri) if !matches!(uri.path(), "" | "/") => {
            Err("a collector URL has no path: /v1/traces is added to it".to_owned())
        }
        addr @ ServerAddr::Http(_) => Ok(addr.to_string()),
    }
}

fn parse_bind(raw: &str) -> Result<BindAddr, String> {
    if raw.starts_with('/') {
        return Ok(BindAddr::Unix(PathBuf::from(raw)));
    }
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(BindAddr::Tcp(addr));
    }
    // Go's `:8008` means every interface; Go proxy deployments use it.
    if let Some(port) = raw.strip_prefix(':') {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(BindAddr::Tcp(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                port,
            ))));
        }
    }
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err("not host:port".to_owned());
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err("not host:port (the port is not a number from 0 to 65535)".to_owned());
    };
    if host.is_empty() {
        return Err("not host:port".to_owned());
    }
    match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Ok(BindAddr::Tcp(addr)),
        Ok(None) => Err(format!("the host {host:?} has no address")),
        Err(e) => Err(format!("the host {host:?} does not resolve ({e})")),
    }
}

fn existing_file(setting: &'static Setting, raw: &str) -> Result<PathBuf, ConfigError> {
    let path = Path::new(raw);
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(path.to_owned()),
        Ok(_) => Err(invalid(setting, raw, "not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(invalid(setting, raw, "no such file"))
        }
        Err(e) => Err(invalid(setting, raw, format!("cannot be read ({e})"))),
    }
}

fn parse_level(raw: &str) -> Option<tracing::Level> {
    Some(match raw.to_ascii_lowercase().as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" => tracing::Level::WARN,
        // `err` is the Go proxy's spelling.
        "error" | "err" => tracing::Level::ERROR,
        _ => return None,
    })
}

/// A database URL with its password replaced by `***`, fit for messages and logs.
///
/// Handles the password in the userinfo (`postgres://user:pw@host/db`, where `pw` may
/// contain unescaped `@` or `/`), in the query (`?password=pw`), and in libpq
/// `key=value` strings (`password=pw`, `password='p w'`).
pub fn redact_db_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_values(url);
    };
    let (main, query) = match rest.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    // The last `@` ends the userinfo: hosts and database names do not contain one,
    // passwords written by hand sometimes do.
    match main.rfind('@') {
        Some(at) => match main[..at].split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***");
                out.push_str(&main[at..]);
            }
            None => out.push_str(main),
        },
        None => out.push_str(main),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// libpq `key = value` pairs, values optionally single-quoted with `\` escapes.
fn redact_key_values(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while !rest.is_empty() {
        let trimmed = rest.trim_start();
        out.push_str(&rest[..rest.len() - trimmed.len()]);
        rest = trimmed;
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        out.push_str(key);
        rest = &rest[key_end..];
        let after_eq = rest.trim_start();
        let Some(value_part) = after_eq.strip_prefix('=') else {
            continue;
        };
        out.push_str(&rest[..rest.len() - after_eq.len()]);
        out.push('=');
        let value_start = value_part.trim_start();
        out.push_str(&value_part[..value_part.len() - value_start.len()]);
        let value_len = value_length(value_start);
        if key.eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.push_str(&value_start[..value_len]);
        }
        rest = &value_start[value_len..];
    }
    out
}

/// Bytes taken by one libpq value at the start of `s`.
fn value_length(s: &str) -> usize {
    if !s.starts_with('\'') {
        return s.find(char::is_whitespace).unwrap_or(s.len());
    }
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => return i + 1,
            _ => {}
        }
    }
    s.len()
}

fn version_text() -> String {
    format!("slidesync {}\n", env!("CARGO_PKG_VERSION"))
}

fn help_text() -> String {
    let mut out = format!(
        "slidesync {}: {}\n\n\
         Usage: slidesync [--FLAG VALUE | --FLAG=VALUE]...\n\n\
         Each setting is an environment variable or a flag; the flag wins. An empty value\n\
         counts as unset.\n\nSettings:\n",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_DESCRIPTION"),
    );
    push_settings(&mut out, &SETTINGS);
    out.push_str(
        "\nCommands:\n  import-go                            Import a Go proxy's database \
         (see slidesync import-go --help)\n\
         \nOther flags:\n  -h, --help                           Print this help\n  \
         -V, --version                        Print the version\n",
    );
    out
}

fn import_help_text() -> String {
    let mut out = format!(
        "slidesync {} import-go: switch from the Go sliding sync proxy\n\n\
         Usage: slidesync import-go --from URL [--FLAG VALUE | --FLAG=VALUE]...\n\n\
         Reads the Go proxy's database (never writes it) and stores into slidesync's store:\n\
         every device's newest access token (kept encrypted; SYNCV3_SECRET is required\n\
         here and must be the Go proxy's), its unacknowledged to-device messages at their\n\
         Go positions, its device-list changes, one-time-key counts and fallback key\n\
         types. Rooms are not imported: every device starts with an initial /sync. Stop\n\
         the Go proxy first, and run this while slidesync is not running on the store;\n\
         running it again changes nothing.\n\n\
         Settings:\n",
        env!("CARGO_PKG_VERSION"),
    );
    push_settings(&mut out, &IMPORT_SETTINGS);
    out.push_str("\nOther flags:\n  -h, --help                           Print this help\n");
    out
}

fn push_settings(out: &mut String, settings: &[&Setting]) {
    for setting in settings {
        let flag = format!("--{} <{}>", setting.flag, setting.value_name);
        let default = match setting.default {
            Fallback::Required => "required".to_owned(),
            Fallback::Unset => "unset by default".to_owned(),
            Fallback::Value(value) => format!("default {value}"),
        };
        out.push_str(&format!(
            "  {flag:<36} {}, {default}\n      {}\n",
            setting.env, setting.meaning
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_VALUE: &str = "hunter2-very-secret";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> HashMap<String, String> {
        env(&[
            ("SYNCV3_SERVER", "https://matrix.example.org"),
            ("SYNCV3_DB", "postgres://proxy:dbpass@localhost/syncv3"),
            ("SYNCV3_SECRET", SECRET_VALUE),
        ])
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn run(args: &[String], env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        match parse(args, env)? {
            Parsed::Run(config) => Ok(*config),
            other => panic!("expected a config, got {other:?}"),
        }
    }

    fn error(args: &[String], env: &HashMap<String, String>) -> String {
        let err = run(args, env).expect_err("expected a config error");
        let line = err.to_string();
        assert!(!line.contains('\n'), "not one line: {line}");
        assert!(!line.contains(SECRET_VALUE), "secret leaked: {line}");
        line
    }

    fn with(mut base: HashMap<String, String>, key: &str, value: &str) -> HashMap<String, String> {
        base.insert(key.to_owned(), value.to_owned());
        base
    }

    #[test]
    fn defaults_fill_everything_but_the_required_three() {
        let config = run(&[], &minimal()).unwrap();
        assert_eq!(
            config.server,
            ServerAddr::Http("https://matrix.example.org".parse().unwrap())
        );
        assert_eq!(
            config.db,
            Db::Postgres("postgres://proxy:dbpass@localhost/syncv3".into())
        );
        assert_eq!(config.secret.as_deref(), Some(SECRET_VALUE));
        assert_eq!(config.bind, BindAddr::Tcp("0.0.0.0:8008".parse().unwrap()));
        assert_eq!(config.tls, None);
        assert_eq!(config.log_level, tracing::Level::INFO);
        assert_eq!(config.max_db_conn, 0);
        assert_eq!(config.http_timeout, Duration::from_secs(300));
        assert_eq!(config.http_initial_timeout, Duration::from_secs(1800));
    }

    #[test]
    fn flags_override_env_in_both_spellings() {
        let env = with(minimal(), "SYNCV3_BINDADDR", "127.0.0.1:1");
        let env = with(env, "SYNCV3_LOG_LEVEL", "error");
        let config = run(
            &args(&[
                "--bindaddr",
                "127.0.0.1:2",
                "--log-level=debug",
                "--max-db-conn",
                "7",
                "--http-timeout-secs=5",
                "--http-initial-timeout-secs",
                "6",
            ]),
            &env,
        )
        .unwrap();
        assert_eq!(config.bind, BindAddr::Tcp("127.0.0.1:2".parse().unwrap()));
        assert_eq!(config.log_level, tracing::Level::DEBUG);
        assert_eq!(config.max_db_conn, 7);
        assert_eq!(config.http_timeout, Duration::from_secs(5));
        assert_eq!(config.http_initial_timeout, Duration::from_secs(6));
    }

    #[test]
    fn flags_alone_are_enough() {
        let config = run(
            &args(&[
                "--server=http://hs:8008/",
                "--db",
                "postgresql://localhost/db",
                "--secret",
                "s",
            ]),
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(config.server.to_string(), "http://hs:8008");
        assert_eq!(config.secret.as_deref(), Some("s"));
    }

    #[test]
    fn server_loses_trailing_slashes_and_keeps_a_path_prefix() {
        let config = run(
            &[],
            &with(minimal(), "SYNCV3_SERVER", "https://example.org/matrix//"),
        )
        .unwrap();
        let ServerAddr::Http(uri) = &config.server else {
            panic!("expected http")
        };
        assert_eq!(uri.path(), "/matrix");
        assert_eq!(config.server.to_string(), "https://example.org/matrix");
        let bare = run(
            &[],
            &with(minimal(), "SYNCV3_SERVER", "https://example.org/"),
        )
        .unwrap();
        assert_eq!(bare.server.to_string(), "https://example.org");
    }

    #[test]
    fn paths_starting_with_a_slash_are_unix_sockets() {
        let env = with(minimal(), "SYNCV3_SERVER", "/run/synapse.sock");
        let env = with(env, "SYNCV3_BINDADDR", "/run/slidesync.sock");
        let config = run(&[], &env).unwrap();
        assert_eq!(config.server, ServerAddr::Unix("/run/synapse.sock".into()));
        assert_eq!(config.bind, BindAddr::Unix("/run/slidesync.sock".into()));
    }

    #[test]
    fn go_style_port_only_bind_address_listens_everywhere() {
        let config = run(&[], &with(minimal(), "SYNCV3_BINDADDR", ":8009")).unwrap();
        assert_eq!(config.bind, BindAddr::Tcp("0.0.0.0:8009".parse().unwrap()));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let config = run(&[], &with(minimal(), "SYNCV3_BINDADDR", "")).unwrap();
        assert_eq!(config.bind, BindAddr::Tcp("0.0.0.0:8008".parse().unwrap()));
        let embedded = with(minimal(), "SYNCV3_DB", "");
        let config = run(&[], &with(embedded, "SYNCV3_SECRET", "")).unwrap();
        assert_eq!(
            config.secret, None,
            "an empty secret is generated, never used"
        );
    }

    #[test]
    fn a_postgres_database_needs_an_explicit_secret() {
        let err = run(&[], &with(minimal(), "SYNCV3_SECRET", "")).unwrap_err();
        let line = err.to_string();
        assert!(
            line.starts_with("SYNCV3_SECRET (--secret) is not set but SYNCV3_DB (--db)"),
            "{line}"
        );
        assert!(line.contains("same secret"), "{line}");
    }

    #[test]
    fn a_missing_server_is_named() {
        let mut env = minimal();
        env.remove("SYNCV3_SERVER");
        let line = error(&[], &env);
        assert!(
            line.starts_with("SYNCV3_SERVER (--server) is not set: set it to"),
            "{line}"
        );
    }

    #[test]
    fn the_server_alone_runs_on_the_embedded_store_with_a_generated_secret() {
        let env = env(&[("SYNCV3_SERVER", "https://matrix.example.org")]);
        let config = run(&[], &env).unwrap();
        assert_eq!(
            config.db,
            Db::Sqlite(PathBuf::from("./slidesync-data").join(SQLITE_FILE))
        );
        assert_eq!(config.data_dir, PathBuf::from("./slidesync-data"));
        assert_eq!(config.secret, None);

        let config = run(&args(&["--data-dir", "/var/lib/slidesync"]), &env).unwrap();
        assert_eq!(
            config.db,
            Db::Sqlite(PathBuf::from("/var/lib/slidesync/slidesync.db"))
        );
    }

    #[test]
    fn db_accepts_an_sqlite_path() {
        let config = run(&[], &with(minimal(), "SYNCV3_DB", "sqlite:///srv/proxy.db")).unwrap();
        assert_eq!(config.db, Db::Sqlite(PathBuf::from("/srv/proxy.db")));
        let config = run(&[], &with(minimal(), "SYNCV3_DB", "sqlite://rel/proxy.db")).unwrap();
        assert_eq!(config.db, Db::Sqlite(PathBuf::from("rel/proxy.db")));
        let line = error(&[], &with(minimal(), "SYNCV3_DB", "sqlite://"));
        assert!(line.contains("sqlite:// names no file"), "{line}");
        for odd in ["sqlite://x.db?mode=rwc", "sqlite://:memory:"] {
            let line = error(&[], &with(minimal(), "SYNCV3_DB", odd));
            assert!(line.contains("a file path only"), "{line}");
        }
    }

    #[test]
    fn server_without_a_scheme_says_what_to_write() {
        let line = error(&[], &with(minimal(), "SYNCV3_SERVER", "matrix.org"));
        assert_eq!(
            line,
            "SYNCV3_SERVER (--server) is \"matrix.org\": not a URL; set it to the homeserver's \
             client API base URL like https://matrix.example.org, or a unix socket path \
             starting with /"
        );
    }

    #[test]
    fn server_with_another_scheme_or_no_host_is_rejected() {
        let line = error(&[], &with(minimal(), "SYNCV3_SERVER", "ftp://matrix.org"));
        assert!(line.contains("\"ftp\" is neither http nor https"), "{line}");
        let line = error(&[], &with(minimal(), "SYNCV3_SERVER", "https://"));
        assert!(
            line.starts_with("SYNCV3_SERVER (--server) is \"https://\": "),
            "{line}"
        );
        let line = error(&[], &with(minimal(), "SYNCV3_SERVER", "https://hs/?a=b"));
        assert!(line.contains("query"), "{line}");
    }

    #[test]
    fn db_must_be_a_postgres_url_and_its_password_is_redacted() {
        let line = error(&[], &with(minimal(), "SYNCV3_DB", "mysql://u:pw123@h/db"));
        assert_eq!(
            line,
            "SYNCV3_DB (--db) is \"mysql://u:***@h/db\": neither a Postgres URL nor \
             sqlite://PATH; set it to a Postgres URL like \
             postgresql://user:password@localhost/syncv3, to sqlite://PATH, or unset it for \
             the embedded store"
        );
        let line = error(
            &[],
            &with(minimal(), "SYNCV3_DB", "user=me password=pw123 dbname=x"),
        );
        assert!(!line.contains("pw123"), "{line}");
        assert!(line.contains("key=value"), "{line}");
    }

    #[test]
    fn bad_bind_address_is_named() {
        let line = error(&[], &with(minimal(), "SYNCV3_BINDADDR", "8008"));
        assert!(
            line.starts_with("SYNCV3_BINDADDR (--bindaddr) is \"8008\": not host:port; "),
            "{line}"
        );
        let line = error(&[], &with(minimal(), "SYNCV3_BINDADDR", "0.0.0.0:99999"));
        assert!(line.starts_with("SYNCV3_BINDADDR (--bindaddr)"), "{line}");
    }

    #[test]
    fn log_levels_accept_the_go_spellings_and_reject_others() {
        for (raw, level) in [
            ("trace", tracing::Level::TRACE),
            ("DEBUG", tracing::Level::DEBUG),
            ("warn", tracing::Level::WARN),
            ("err", tracing::Level::ERROR),
            ("error", tracing::Level::ERROR),
        ] {
            let config = run(&[], &with(minimal(), "SYNCV3_LOG_LEVEL", raw)).unwrap();
            assert_eq!(config.log_level, level, "{raw}");
        }
        let line = error(&[], &with(minimal(), "SYNCV3_LOG_LEVEL", "loud"));
        assert_eq!(
            line,
            "SYNCV3_LOG_LEVEL (--log-level) is \"loud\": unknown log level; set it to one of \
             trace, debug, info, warn, error"
        );
    }

    #[test]
    fn numbers_must_be_whole_and_timeouts_positive() {
        let line = error(&[], &with(minimal(), "SYNCV3_MAX_DB_CONN", "-1"));
        assert!(
            line.starts_with("SYNCV3_MAX_DB_CONN (--max-db-conn) is \"-1\": "),
            "{line}"
        );
        let line = error(&[], &with(minimal(), "SYNCV3_MAX_DB_CONN", "many"));
        assert!(line.contains("not a non-negative whole number"), "{line}");
        let line = error(&[], &with(minimal(), "SYNCV3_HTTP_TIMEOUT_SECS", "0"));
        assert!(
            line.starts_with("SYNCV3_HTTP_TIMEOUT_SECS (--http-timeout-secs) is \"0\": "),
            "{line}"
        );
        let line = error(
            &[],
            &with(minimal(), "SYNCV3_HTTP_INITIAL_TIMEOUT_SECS", "1.5"),
        );
        assert!(line.contains("not a whole number of seconds"), "{line}");
    }

    #[test]
    fn ops_listeners_take_host_port_and_need_their_own_ports() {
        let config = run(&[], &minimal()).unwrap();
        assert_eq!((config.prom, config.pprof), (None, None));
        assert_eq!(config.log_format, LogFormat::Text);
        let env = with(minimal(), "SYNCV3_PROM", ":2112");
        let env = with(env, "SYNCV3_PPROF", "127.0.0.1:6060");
        let env = with(env, "SYNCV3_LOG_FORMAT", "JSON");
        let config = run(&[], &env).unwrap();
        assert_eq!(config.prom, Some("0.0.0.0:2112".parse().unwrap()));
        assert_eq!(config.pprof, Some("127.0.0.1:6060".parse().unwrap()));
        assert_eq!(config.log_format, LogFormat::Json);

        let line = error(&[], &with(minimal(), "SYNCV3_PROM", "2112"));
        assert_eq!(
            line,
            "SYNCV3_PROM (--prom) is \"2112\": not host:port; set it to host:port like \
             127.0.0.1:2112, or leave it unset to serve no metrics"
        );
        let line = error(&[], &with(minimal(), "SYNCV3_PPROF", "/run/pprof.sock"));
        assert!(
            line.starts_with("SYNCV3_PPROF (--pprof) is \"/run/pprof.sock\": a unix socket"),
            "{line}"
        );
        let same = with(minimal(), "SYNCV3_PROM", "127.0.0.1:7000");
        let line = error(&[], &with(same, "SYNCV3_PPROF", "127.0.0.1:7000"));
        assert!(line.contains("the same address as SYNCV3_PROM"), "{line}");
        let line = error(&[], &with(minimal(), "SYNCV3_LOG_FORMAT", "xml"));
        assert_eq!(
            line,
            "SYNCV3_LOG_FORMAT (--log-format) is \"xml\": unknown log format; set it to text \
             or json"
        );
    }

    #[test]
    fn traces_go_to_a_collector_base_url_with_both_or_neither_credentials() {
        assert_eq!(run(&[], &minimal()).unwrap().otlp, None);
        let env = with(minimal(), "SYNCV3_OTLP_URL", "http://127.0.0.1:4318/");
        let config = run(&[], &env).unwrap();
        assert_eq!(
            config.otlp,
            Some(OtlpTarget {
                base: "http://127.0.0.1:4318".into(),
                basic_auth: None
            })
        );
        let env = with(env, "SYNCV3_OTLP_USERNAME", "ops");
        let line = error(&[], &env);
        assert!(
            line.starts_with("SYNCV3_OTLP_PASSWORD (--otlp-password) is not set"),
            "{line}"
        );
        let config = run(&[], &with(env, "SYNCV3_OTLP_PASSWORD", "hunter2")).unwrap();
        let auth = config.otlp.as_ref().unwrap().basic_auth.clone();
        assert_eq!(auth, Some(("ops".into(), "hunter2".into())));
        assert!(!format!("{config:?}").contains("hunter2"));

        let line = error(
            &[],
            &with(minimal(), "SYNCV3_OTLP_URL", "http://c:4318/v1/traces"),
        );
        assert!(line.contains("a collector URL has no path"), "{line}");
        let line = error(&[], &with(minimal(), "SYNCV3_OTLP_URL", "collector:4318"));
        assert!(
            line.starts_with("SYNCV3_OTLP_URL (--otlp-url) is \"collector:4318\""),
            "{line}"
        );
    }

    #[test]
    fn tls_needs_both_files_or_neither() {
        let dir = std::env::temp_dir().join(format!("slidesync-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, "cert").unwrap();
        std::fs::write(&key, "key").unwrap();
        let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());

        let line = error(&[], &with(minimal(), "SYNCV3_TLS_CERT", cert_s));
        assert_eq!(
            line,
            "SYNCV3_TLS_KEY (--tls-key) is not set but SYNCV3_TLS_CERT (--tls-cert) is: set \
             both to serve HTTPS, or neither to serve plain HTTP"
        );
        let line = error(&args(&["--tls-key", key_s]), &minimal());
        assert!(
            line.starts_with("SYNCV3_TLS_CERT (--tls-cert) is not set but"),
            "{line}"
        );

        let missing = dir.join("missing.pem");
        let line = error(
            &args(&["--tls-cert", cert_s, "--tls-key", missing.to_str().unwrap()]),
            &minimal(),
        );
        assert!(
            line.starts_with("SYNCV3_TLS_KEY (--tls-key) is \""),
            "{line}"
        );
        assert!(line.contains("no such file"), "{line}");

        let config = run(
            &args(&["--tls-cert", cert_s, "--tls-key", key_s]),
            &minimal(),
        )
        .unwrap();
        assert_eq!(config.tls, Some(TlsFiles { cert, key }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn import_go_takes_the_store_settings_and_needs_no_homeserver() {
        let from = "postgres://go:gopass@old-host/syncv3";
        let env = env(&[
            ("SYNCV3_SECRET", SECRET_VALUE),
            ("SYNCV3_IMPORT_FROM", from),
        ]);
        let Parsed::ImportGo(config) =
            parse(&args(&["import-go", "--db=sqlite:///srv/s.db"]), &env).unwrap()
        else {
            panic!("expected import-go")
        };
        assert_eq!(config.from, from);
        assert_eq!(config.db, Db::Sqlite(PathBuf::from("/srv/s.db")));
        assert_eq!(config.secret, SECRET_VALUE);
        let debug = format!("{config:?}");
        assert!(
            !debug.contains(SECRET_VALUE) && !debug.contains("gopass"),
            "{debug}"
        );

        let Parsed::ImportGo(config) =
            parse(&args(&["import-go", "--from", "postgres://new/db"]), &env).unwrap()
        else {
            panic!("expected import-go")
        };
        assert_eq!(config.from, "postgres://new/db", "the flag wins");
        assert_eq!(
            config.db,
            Db::Sqlite(PathBuf::from("./slidesync-data").join(SQLITE_FILE))
        );

        let stray = parse(&args(&["import-go", "--bindaddr", ":8008"]), &env).unwrap_err();
        assert_eq!(
            stray.to_string(),
            "unknown flag \"--bindaddr\": run slidesync import-go --help to list the settings"
        );
        let Parsed::Help(text) = parse(&args(&["import-go", "--help"]), &HashMap::new()).unwrap()
        else {
            panic!("expected help")
        };
        for setting in IMPORT_SETTINGS {
            assert!(text.contains(setting.env), "{} missing", setting.env);
        }
        assert!(!text.contains("SYNCV3_SERVER"));
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let Parsed::Help(text) = parse(&args(&["--help"]), &HashMap::new()).unwrap() else {
            panic!("expected help")
        };
        for setting in SETTINGS {
            assert!(text.contains(setting.env), "{} missing", setting.env);
            assert!(
                text.contains(&format!("--{} ", setting.flag)),
                "{}",
                setting.flag
            );
            assert!(text.contains(setting.meaning), "{}", setting.env);
        }
        assert!(text.contains("default 0.0.0.0:8008"));
        assert!(text.contains("default 1800"));
        assert!(matches!(
            parse(&args(&["-h"]), &HashMap::new()),
            Ok(Parsed::Help(_))
        ));
    }

    #[test]
    fn public_url_is_an_http_url_without_its_trailing_slash() {
        assert_eq!(run(&[], &minimal()).unwrap().public_url, None);
        let mut vars = minimal();
        vars.insert(
            "SYNCV3_PUBLIC_URL".into(),
            "https://chat.example.org/".into(),
        );
        assert_eq!(
            run(&[], &vars).unwrap().public_url.as_deref(),
            Some("https://chat.example.org")
        );
        for bad in [
            "chat.example.org",
            "ftp://chat.example.org",
            "/run/slidesync.sock",
        ] {
            let line = error(&args(&["--public-url", bad]), &minimal());
            assert!(
                line.starts_with("SYNCV3_PUBLIC_URL (--public-url) is "),
                "{line}"
            );
        }
    }

    #[test]
    fn version_flag_prints_the_package_version() {
        for flag in ["--version", "-V"] {
            let Parsed::Version(text) = parse(&args(&[flag]), &HashMap::new()).unwrap() else {
                panic!("expected version")
            };
            assert!(text.contains(env!("CARGO_PKG_VERSION")));
        }
    }

    #[test]
    fn unknown_flags_and_stray_words_are_errors() {
        let line = error(&args(&["--sever", "x"]), &minimal());
        assert!(line.starts_with("unknown flag \"--sever\""), "{line}");
        let line = error(&args(&["-x"]), &minimal());
        assert!(line.starts_with("unknown flag \"-x\""), "{line}");
        let line = error(&args(&["serve"]), &minimal());
        assert!(
            line.starts_with("unexpected argument at position 1"),
            "{line}"
        );
        let line = error(&args(&["--server"]), &minimal());
        assert!(line.starts_with("SYNCV3_SERVER (--server) was given as a flag without a value"));
        let line = error(&args(&["--secret", "--db", "postgres://x"]), &minimal());
        assert!(
            line.starts_with("SYNCV3_SECRET (--secret) was given"),
            "{line}"
        );
    }

    #[test]
    fn secret_never_appears_in_errors_or_debug() {
        let misspelt = format!("--secrt={SECRET_VALUE}");
        let line = error(&args(&[&misspelt]), &minimal());
        assert!(line.contains("--secrt"), "{line}");
        let stray = error(&args(&["--secret", "a", SECRET_VALUE]), &minimal());
        assert!(stray.contains("position 3"), "{stray}");

        let config = run(&[], &minimal()).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains(SECRET_VALUE), "{debug}");
        assert!(!debug.contains("dbpass"), "{debug}");
        assert!(debug.contains("secret: Some(\"***\")"), "{debug}");
    }

    #[test]
    fn db_passwords_are_redacted_wherever_they_hide() {
        assert_eq!(
            redact_db_url("postgres://user:secret@host/db"),
            "postgres://user:***@host/db"
        );
        assert_eq!(
            redact_db_url("postgres://user:p@ss/w@host:5432/db?sslmode=disable"),
            "postgres://user:***@host:5432/db?sslmode=disable"
        );
        assert_eq!(
            redact_db_url("postgresql://host/db?user=u&password=pw&sslmode=require"),
            "postgresql://host/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_db_url("postgres://user@host/db"),
            "postgres://user@host/db"
        );
        assert_eq!(
            redact_db_url("user=me password = 'p w\\'x' dbname=syncv3"),
            "user=me password = *** dbname=syncv3"
        );
        assert_eq!(redact_db_url("password=pw"), "password=***");
    }
}
