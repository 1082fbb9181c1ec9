//! The `slidesync` binary: reads the settings and hands over to [`slidesync::app::run`].

use std::collections::HashMap;
use std::process::ExitCode;

use slidesync::config::{self, Parsed};

// Many small, short-lived allocations on many threads (request and event buffers);
// mimalloc handles that pattern with less contention and fragmentation than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    // Non-UTF-8 variables cannot be ours (all settings are text); skip them instead of
    // panicking as `std::env::vars` would.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();

    match config::parse(&args, &env) {
        Ok(Parsed::Help(text) | Parsed::Version(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(config)) => run(
            config.log_level,
            config.log_format,
            config.otlp.clone().as_ref(),
            slidesync::app::run(*config),
        ),
        Ok(Parsed::ImportGo(config)) => {
            run(config.log_level, config.log_format, None, async move {
                let summary = slidesync::ops::import_go::run(&config).await?;
                println!("{summary}");
                Ok::<_, slidesync::ops::import_go::ImportError>(())
            })
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up logging (and traces, when configured) and the runtime, and runs `work` to
/// its end.
fn run<E: std::fmt::Display>(
    level: tracing::Level,
    format: config::LogFormat,
    otlp: Option<&slidesync::ops::otlp::OtlpTarget>,
    work: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let traces = match otlp {
        None => None,
        Some(target) => match slidesync::ops::otlp::provider(target, runtime.handle().clone()) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("SYNCV3_OTLP_URL (--otlp-url): cannot set up the trace exporter: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    slidesync::ops::logging::init(level, format, traces.as_ref());
    let result = runtime.block_on(work);
    // The last spans (the shutdown's commits) are still in the batch; the runtime is kept
    // until they are sent, since the exporter sends on it.
    if let Some(provider) = traces {
        if let Err(e) = provider.shutdown() {
            eprintln!("traces: the last spans were not sent: {e}");
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
