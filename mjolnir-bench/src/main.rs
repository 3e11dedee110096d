//! `mjolnir-bench`: the bank-transfer benchmark of Mjölnir against pgbench and a
//! hand-written axum + sqlx endpoint. `scripts/bench.sh` starts PostgreSQL and the servers,
//! calls `run` for every system and point, interleaved, and then `report`; then the same
//! with `queries-run` and `queries-report` for the queries benchmark (`queries.rs`) and
//! its search (`search.rs`), and `live-run` and `live-report` for the live queries
//! benchmark (`live.rs`).

mod cpu;
mod driver;
mod live;
mod memory;
mod queries;
mod report;
mod search;
mod stats;
mod systems;
mod workload;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use driver::Window;
use stats::{RunLabel, RunResult, System};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use systems::endpoint::{self, EndpointWorker};
use systems::mjolnir::MjolnirWorker;
use systems::pgbench::Pgbench;
use workload::Workload;

#[derive(Parser, Debug)]
#[command(
    name = "mjolnir-bench",
    about = "Bank transfers: Mjölnir vs pgbench vs a hand-written endpoint; and queries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the hand-written baseline: `POST /transfer` as one SQL transaction.
    Endpoint {
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long, default_value = "127.0.0.1")]
        listen: IpAddr,
        /// 0 for any free port: the address is printed once it listens.
        #[arg(long)]
        port: u16,
        /// Database connections; Mjölnir's default is 16, so is this.
        #[arg(long, default_value_t = 16)]
        pool_size: u32,
    },
    /// Measure one system at one point and append the result to a JSON-lines file.
    Run(RunArgs),
    /// Measure the running server's memory with idle connections and subscribed keys, and
    /// append a Markdown section to `out`.
    Memory {
        /// Mjölnir's WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        mjolnir_url: String,
        /// The server's process id (its RSS is read from /proc).
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 1000)]
        connections: u32,
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure one variant of the queries benchmark at one point and append the result to
    /// a JSON-lines file.
    QueriesRun(queries::RunArgs),
    /// Write the queries benchmark's sections, or the search's, from its results file.
    QueriesReport {
        #[arg(long)]
        results: PathBuf,
        /// Which sections: the queries' (`## Queries`), or the search's (`### Search`, to
        /// follow them).
        #[arg(long, value_enum, default_value = "queries")]
        section: Section,
        #[arg(long)]
        out: PathBuf,
        /// Append the sections to `out` (the transfers' report) instead of writing a
        /// document of their own.
        #[arg(long)]
        append: bool,
        /// The command line that produced the results, quoted in a document of their own.
        #[arg(long, default_value = "")]
        command: String,
        /// Free text about the run (date, machine, mode).
        #[arg(long, default_value = "")]
        environment: String,
    },
    /// Run the live queries benchmark (fan-out, untouched queries, row-level security)
    /// and append its results to a JSON-lines file.
    LiveRun(live::RunArgs),
    /// Write the live queries benchmark's section from its results file.
    LiveReport {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Append the section to `out` instead of writing a document of its own.
        #[arg(long)]
        append: bool,
        /// The command line that produced the results, quoted in a document of their own.
        #[arg(long, default_value = "")]
        command: String,
        /// Free text about the run (date, machine, mode).
        #[arg(long, default_value = "")]
        environment: String,
    },
    /// Write the Markdown report from a results file.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The command line that produced the results, quoted in the report.
        #[arg(long)]
        command: String,
        /// Free text about the run (date, machine, mode), quoted in the report.
        #[arg(long, default_value = "")]
        environment: String,
    },
}

/// The sections `queries-report` writes.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Section {
    Queries,
    Search,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Queries => "queries",
            Section::Search => "search",
        }
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[arg(long, value_enum)]
    system: System,
    #[arg(long, value_enum, default_value = "uniform")]
    workload: Workload,
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Load before the window, not measured (connections warm, caches filled), in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The server's synchronous_commit during the run; only recorded, set by the caller.
    #[arg(long, default_value = "on")]
    sync: String,
    #[arg(long, default_value_t = 1)]
    round: u32,
    /// Mjölnir's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    mjolnir_url: String,
    /// Keep the keys each transfer read cached and subscribed, as a `Client` with the
    /// default cache does: later transfers then read them from the cache, not the server.
    #[arg(long)]
    keep_subscriptions: bool,
    /// The endpoint's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    endpoint_url: String,
    /// The database, for pgbench.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin/pgbench")]
    pgbench: PathBuf,
    /// Scratch directory for pgbench's script and logs.
    #[arg(long, default_value = "/tmp/mjolnir-bench")]
    work_dir: PathBuf,
    /// Where to append the result line.
    #[arg(long)]
    out: PathBuf,
    /// The postmaster's process id: with it, the CPU time of PostgreSQL in the window is
    /// measured (see `cpu.rs`).
    #[arg(long)]
    postgres_pid: Option<u32>,
    /// The process id of the server under test (Mjölnir or the endpoint), for the same.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Endpoint {
            database_url,
            listen,
            port,
            pool_size,
        } => endpoint::serve(&database_url, SocketAddr::new(listen, port), pool_size).await,
        Command::Run(args) => run(args).await,
        Command::QueriesRun(args) => queries::run(args).await,
        Command::QueriesReport {
            results,
            section,
            out,
            append,
            command,
            environment,
        } => {
            let results = report::load_queries(&results)
                .with_context(|| format!("reading {}", results.display()))?;
            let ctx = report::Context {
                command,
                environment,
            };
            let sections = match section {
                Section::Queries => report::render_queries(&results, &ctx),
                Section::Search => report::render_search(&results, &ctx),
            };
            if append {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&out)
                    .with_context(|| format!("opening {}", out.display()))?;
                write!(file, "\n{sections}")?;
            } else {
                let name = section.name();
                let doc = format!(
                    "# Benchmarks: {name}\n\nGenerated by `scripts/bench.sh --only {name}` \
                     (do not edit by hand).\n\nCommand:\n\n```sh\n{}\n```\n\n{sections}",
                    ctx.command
                );
                std::fs::write(&out, doc).with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(())
        }
        Command::LiveRun(args) => live::run(args).await,
        Command::LiveReport {
            results,
            out,
            append,
            command,
            environment,
        } => {
            let records = report::load_live(&results)
                .with_context(|| format!("reading {}", results.display()))?;
            let ctx = report::Context {
                command,
                environment,
            };
            let section = report::render_live(&records, &ctx);
            if append {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&out)
                    .with_context(|| format!("opening {}", out.display()))?;
                write!(file, "\n{section}")?;
            } else {
                let doc = format!(
                    "# Benchmarks: live queries\n\nGenerated by `scripts/bench.sh --only live` \
                     (do not edit by hand).\n\nCommand:\n\n```sh\n{}\n```\n\n{section}",
                    ctx.command
                );
                std::fs::write(&out, doc).with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(())
        }
        Command::Memory {
            mjolnir_url,
            pid,
            connections,
            keys,
            out,
        } => {
            let section = memory::measure(&mjolnir_url, pid, connections, keys).await?;
            print!("{section}");
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&out)
                .with_context(|| format!("opening {}", out.display()))?;
            writeln!(file, "\n{section}")?;
            Ok(())
        }
        Command::Report {
            results,
            out,
            command,
            environment,
        } => {
            let results =
                report::load(&results).with_context(|| format!("reading {}", results.display()))?;
            let doc = report::render(
                &results,
                &report::Context {
                    command,
                    environment,
                },
            );
            report::write(&out, &doc, &results)?;
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let window = Window {
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
    };
    // Each system's window starts when its load does, which is when the probe starts too.
    let probe = cpu::Probe {
        postgres: args.postgres_pid,
        server: args.server_pid.filter(|_| args.system != System::Pgbench),
    };
    // Mjölnir's metrics beside its WebSocket: ws://host:port/ws → http://host:port/metrics.
    let lanes = (args.system == System::Mjolnir).then(|| cpu::Lanes {
        metrics_url: args
            .mjolnir_url
            .replacen("ws://", "http://", 1)
            .trim_end_matches("/ws")
            .to_owned()
            + "/metrics",
    });
    let probe_window = || probe.spawn(lanes.clone(), window.warmup, window.measure);
    let (rec, cpu) = match args.system {
        System::Mjolnir => {
            let workers = MjolnirWorker::connect_all(
                &args.mjolnir_url,
                args.clients,
                args.keep_subscriptions,
            )
            .await?;
            let cpu = probe_window();
            (driver::drive(workers, args.workload, window).await?, cpu)
        }
        System::Endpoint => {
            let workers = EndpointWorker::all(&args.endpoint_url, args.clients)?;
            let cpu = probe_window();
            (driver::drive(workers, args.workload, window).await?, cpu)
        }
        System::Pgbench => {
            let database_url = args
                .database_url
                .clone()
                .context("--database-url (or DATABASE_URL) is needed for pgbench")?;
            let pgbench = Pgbench {
                bin: args.pgbench.clone(),
                database_url,
                work_dir: args.work_dir.clone(),
            };
            let cpu = probe_window();
            (pgbench.run(args.workload, args.clients, window).await?, cpu)
        }
    };
    let used = cpu.await?;
    let cpu = used.and_then(|used| used.per_transfer(rec.committed));
    let label = RunLabel {
        system: args.system,
        workload: args.workload,
        clients: args.clients,
        sync: args.sync.clone(),
        round: args.round,
    };
    let mut result = RunResult::new(label, window.measure, &rec);
    result.cpu_us = cpu;
    result.commit_lane_busy = used.and_then(|u| u.lane_busy);
    println!(
        "{:>8} {:>7} {:>3} clients sync={:<3} round {}: {:>7.0} TPS, abort {:>5.1} %, p50 {:.2} ms, p99 {:.2} ms, max attempts {}, gave up {}",
        result.label.system.name(),
        result.label.workload.name(),
        result.label.clients,
        result.label.sync,
        result.label.round,
        result.tps,
        100.0 * result.abort_rate,
        result.p50_us as f64 / 1000.0,
        result.p99_us as f64 / 1000.0,
        result.max_attempts,
        result.failed,
    );
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    writeln!(out, "{}", serde_json::to_string(&result)?)?;
    Ok(())
}
