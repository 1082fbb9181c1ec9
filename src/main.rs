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

    let parsed = match config::parse(&args, &env) {
        Ok(Parsed::Help(text) | Parsed::Version(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let (level, format) = match &parsed {
        Parsed::Run(config) => (config.log_level, config.log_format),
        Parsed::ImportGo(config) => (config.log_level, config.log_format),
        Parsed::Help(_) | Parsed::Version(_) => return ExitCode::SUCCESS,
    };
    slidesync::ops::logging::init(level, format);

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
    let done = match parsed {
        Parsed::ImportGo(config) => runtime
            .block_on(slidesync::ops::import_go::run(&config))
            .map(|summary| println!("{summary}"))
            .map_err(|e| e.to_string()),
        Parsed::Run(config) => runtime
            .block_on(slidesync::app::run(*config))
            .map_err(|e| e.to_string()),
        Parsed::Help(_) | Parsed::Version(_) => Ok(()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
