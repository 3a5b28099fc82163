//! Logging and the async runtime, as both binaries set them up.

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The logging flags every command takes.
#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `trellis_proxy=debug`.
    #[arg(long, global = true, env = "TRELLIS_LOG", default_value = "info")]
    pub log: String,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    pub fn init(&self) {
        use tracing_subscriber::EnvFilter;
        let filter = EnvFilter::try_new(&self.log).unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

/// One worker thread per core the process may run on (taskset/cgroup limits included). With a
/// single core, a current-thread runtime: the same one thread, without cross-thread wake-ups
/// between the I/O driver and a worker (measured in docs/PERFORMANCE-NOTES.md).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
    }
}

/// Runs `work` on [`runtime`]; an error is printed and exits 1.
pub fn block_on<F>(work: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
{
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(work) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
