//! `mjolnir`: the one binary. `dev` runs the whole V-stack locally, `serve` runs one
//! instance against an existing database, and `pg` starts and stops the V-stack's private
//! PostgreSQL alone, for scripts and tests.

use anyhow::Context;
use axum::http::HeaderName;
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use mjolnir_server::identity::{Identity, TrustedProxies, parse_proxy};
use mjolnir_server::knobs::Knobs;
use mjolnir_server::origin::{AllowedOrigins, Origin};
use mjolnir_server::server::{self, Config};
use mjolnir_server::vstack::{ClusterDir, LocalCluster, Log};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// glibc's malloc took about a tenth of the server's CPU under the bank benchmark
/// (`perf`: many small, short-lived allocations for messages and rows, freed on other
/// threads); mimalloc does the same work for less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "mjolnir",
    version,
    about = "Every event handler an atomic transaction over shared state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an app locally: a private PostgreSQL under APP_DIR/.mjolnir/ (unless
    /// DATABASE_URL is set), the app's migrations, its static files and the server.
    ///
    /// As root, when the `postgres` user (which runs PostgreSQL) cannot enter APP_DIR, the
    /// cluster goes in a directory of /var/lib/mjolnir instead, printed at start. One
    /// `mjolnir dev` at a time runs on an app's cluster; it adopts a cluster that an earlier
    /// one, killed, left running, and stops it on exit.
    Dev {
        /// The app directory (HTML/CSS/JS, and migrations/*.sql).
        app_dir: PathBuf,
        /// Use this database instead of a private one.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Run one production instance against DATABASE_URL. Several instances may share one
    /// database behind a load balancer.
    ///
    /// Every connection is anonymous unless --user-header and --trusted-proxy name the
    /// authenticating proxy in front of the server: its header is then the user, believed
    /// only from the proxy's addresses. The hello's user claim is always ignored.
    Serve {
        app_dir: PathBuf,
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[command(flatten)]
        proxy: Proxy,
        #[command(flatten)]
        common: Common,
    },
    /// The private PostgreSQL `mjolnir dev` runs, alone: for scripts and tests.
    #[command(subcommand)]
    Pg(Pg),
}

/// `mjolnir pg`: a cluster in DIR (as root, in /var/lib/mjolnir when the `postgres` user
/// cannot enter DIR), listening only on a unix socket.
#[derive(Subcommand, Debug)]
enum Pg {
    /// Start the cluster of DIR unless it runs already (initialising it on first use),
    /// create DATABASE if missing, print its URL on stdout and leave the cluster running.
    Start {
        dir: PathBuf,
        /// The database whose URL to print.
        #[arg(long, default_value = "postgres")]
        database: String,
        /// Stop the cluster and delete its data and log first, to start an empty one.
        #[arg(long)]
        fresh: bool,
    },
    /// Stop the cluster of DIR if it runs, unless a `mjolnir dev` is running on it.
    Stop {
        dir: PathBuf,
        /// Then delete its data (its log stays), as for a throwaway cluster.
        #[arg(long)]
        remove_data: bool,
    },
}

/// Who a `serve` connection acts for. Without both options every connection is anonymous
/// (the hello's user is ignored): a header anyone who reaches the port can set, or a claim
/// any page can make, is no identity.
#[derive(Args, Debug)]
struct Proxy {
    /// The HTTP header of the WebSocket upgrade in which an authenticating proxy names the
    /// user, for example X-Forwarded-User. Believed only from the addresses of
    /// --trusted-proxy, which it requires; a missing, empty or repeated header is refused.
    /// Without it every connection is anonymous.
    #[arg(long, env = "MJOLNIR_USER_HEADER", requires = "trusted_proxy")]
    user_header: Option<HeaderName>,
    /// The address (10.0.0.5) or network (10.1.0.0/16) of the authenticating proxy; repeat
    /// it for several. Requires --user-header. A connection from any other address is
    /// refused its user (`unauthenticated`, close 4001).
    #[arg(
        long = "trusted-proxy",
        env = "MJOLNIR_TRUSTED_PROXIES",
        value_delimiter = ',',
        requires = "user_header",
        value_parser = parse_proxy
    )]
    trusted_proxy: Vec<IpNet>,
}

impl Proxy {
    fn identity(self) -> Identity {
        match self.user_header {
            Some(name) => Identity::ProxyHeader {
                name,
                proxies: TrustedProxies::new(self.trusted_proxy),
            },
            None => Identity::Anonymous,
        }
    }
}

#[derive(Args, Debug)]
struct Common {
    /// Port to listen on.
    #[arg(long, default_value_t = 8080, env = "PORT")]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, default_value_t = Knobs::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Database connections of this instance.
    #[arg(long, default_value_t = Knobs::default().pool_size)]
    pool_size: u32,
    /// Group commit: the most transactions committed together in one PostgreSQL
    /// transaction (1 turns batching off).
    #[arg(long, env = "MJOLNIR_GROUP_COMMIT", default_value_t = Knobs::default().group_commit)]
    group_commit: usize,
    /// Group-commit batches that may run at once.
    #[arg(long, env = "MJOLNIR_GROUP_COMMIT_LANES", default_value_t = Knobs::default().group_commit_lanes)]
    group_commit_lanes: usize,
    /// The text search configuration of searches (an app's tsvector columns and indexes
    /// must be built with the same one).
    #[arg(long, env = "MJOLNIR_SEARCH_CONFIG", default_value_t = Knobs::default().search_config,
          value_parser = search_config)]
    search_config: String,
    /// The built browser client served at /_mjolnir/ (default: `mjolnir-web` beside this
    /// executable, else the repository's js/dist).
    #[arg(long, env = "MJOLNIR_CLIENT_DIR")]
    client_dir: Option<PathBuf>,
    /// A Content-Security-Policy header for every response, for example
    /// "script-src 'self' 'wasm-unsafe-eval'" (what Mjölnir pages need at the least).
    #[arg(long, env = "MJOLNIR_CONTENT_SECURITY_POLICY")]
    content_security_policy: Option<String>,
    /// An origin whose pages may open a WebSocket, for example https://app.example.com;
    /// repeat it for several. A browser's upgrade from any other origin is refused (403).
    /// Default: under `serve`, the origin of the host the request was sent to (its Host
    /// header, or a trusted proxy's X-Forwarded-Host); under `dev`, pages from localhost,
    /// 127.0.0.0/8 and [::1], to which these are added. Native clients send no origin and
    /// are not refused.
    #[arg(
        long = "allowed-origin",
        env = "MJOLNIR_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origin: Vec<Origin>,
}

impl Common {
    fn knobs(&self) -> Knobs {
        Knobs {
            max_message_bytes: self.max_message_bytes,
            pool_size: self.pool_size,
            group_commit: self.group_commit,
            group_commit_lanes: self.group_commit_lanes,
            search_config: self.search_config.clone(),
            ..Knobs::default()
        }
    }
}

fn search_config(name: &str) -> Result<String, String> {
    if mjolnir_server::knobs::is_config_name(name) {
        Ok(name.to_owned())
    } else {
        Err("a text search configuration name: lowercase letters, digits and underscores, optionally schema.name".to_owned())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,sqlx=warn".into()),
    );
    match cli.command {
        // Its stdout is the URL alone.
        Command::Pg(_) => logs.with_writer(std::io::stderr).init(),
        _ => logs.init(),
    }
    match cli.command {
        Command::Pg(command) => pg(command).await,
        Command::Dev {
            app_dir,
            database_url,
            common,
        } => dev(app_dir, database_url, common).await,
        Command::Serve {
            app_dir,
            database_url,
            proxy,
            common,
        } => {
            let identity = proxy.identity();
            let origins = AllowedOrigins::serve(common.allowed_origin.clone());
            let config = config(&database_url, app_dir, &common, identity.clone(), origins);
            let running = server::start(config, shutdown_signal()?).await?;
            println!("Mjölnir serving on {}", running.http_url());
            match &identity {
                Identity::ProxyHeader { name, proxies } => {
                    println!("Users: the {name} header of the proxies at {proxies}");
                }
                Identity::Anonymous | Identity::TrustClaim => {
                    println!(
                        "Users: none. Every connection is anonymous, whatever its hello claims \
                         (name an authenticating proxy with --user-header and --trusted-proxy)"
                    );
                    tracing::warn!("no --user-header: every connection is anonymous");
                }
            }
            running.wait().await?;
            Ok(())
        }
    }
}

async fn dev(app_dir: PathBuf, database_url: Option<String>, common: Common) -> anyhow::Result<()> {
    anyhow::ensure!(app_dir.is_dir(), "{} is not a directory", app_dir.display());
    let app_dir = app_dir.canonicalize()?;
    // Before PostgreSQL starts: from then on a Ctrl-C must reach the code that stops it.
    let shutdown = shutdown_signal()?;
    let cluster = match database_url {
        Some(_) => None,
        None => {
            let wanted = app_dir.join(".mjolnir").join("pg");
            let dir = ClusterDir::for_dir(&wanted, &label(&app_dir))?;
            println!("Starting PostgreSQL in {}", dir.path.display());
            if let Some(note) = moved(&wanted, &dir) {
                println!("{note}");
            }
            let cluster = LocalCluster::hold(&dir.path, "app")
                .await
                .context("starting the private PostgreSQL")?;
            // No TCP port: the developer's psql needs the socket's directory to connect.
            println!(
                "PostgreSQL listens only on a unix socket in {}: psql '{}'",
                cluster.socket_dir().display(),
                cluster.database_url()
            );
            Some(cluster)
        }
    };
    let url = database_url
        .or_else(|| cluster.as_ref().map(LocalCluster::database_url))
        .expect("one of the two");
    // Anyone can claim any user in dev mode: it is for one developer's machine.
    let origins = AllowedOrigins::Loopback(common.allowed_origin.clone());
    let config = config(&url, app_dir, &common, Identity::TrustClaim, origins);
    let result = async {
        let running = server::start(config, shutdown).await?;
        println!("Mjölnir dev server: open {}", running.http_url());
        running.wait().await?;
        anyhow::Ok(())
    }
    .await;
    if let Some(cluster) = cluster {
        println!("Stopping PostgreSQL");
        cluster.stop().await?;
    }
    result
}

/// `mjolnir pg start` and `mjolnir pg stop`. Only the URL goes to stdout.
async fn pg(command: Pg) -> anyhow::Result<()> {
    match command {
        Pg::Start {
            dir: wanted,
            database,
            fresh,
        } => {
            let dir = ClusterDir::for_dir(&wanted, &label(&wanted))?;
            if let Some(note) = moved(&wanted, &dir) {
                eprintln!("{note}");
            }
            if fresh {
                LocalCluster::remove_data(&dir.path, Log::Remove).await?;
            }
            let cluster = LocalCluster::start(&dir.path, &database)
                .await
                .context("starting the private PostgreSQL")?;
            eprintln!(
                "PostgreSQL runs in {}, on a unix socket in {} (stop it with `mjolnir pg stop {}`)",
                cluster.dir().display(),
                cluster.socket_dir().display(),
                wanted.display()
            );
            println!("{}", cluster.database_url());
            cluster.leave_running();
        }
        Pg::Stop {
            dir: wanted,
            remove_data,
        } => {
            let dir = ClusterDir::for_dir(&wanted, &label(&wanted))?;
            if LocalCluster::stop_in(&dir.path).await? {
                eprintln!("Stopped the PostgreSQL in {}", dir.path.display());
            } else {
                eprintln!("No PostgreSQL runs in {}", dir.path.display());
            }
            if remove_data {
                LocalCluster::remove_data(&dir.path, Log::Keep).await?;
                eprintln!("Deleted its data (the log stays)");
            }
        }
    }
    Ok(())
}

/// The name a cluster directory kept elsewhere starts with: the app's, or DIR's.
fn label(dir: &Path) -> String {
    dir.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Says why the cluster is not where it was asked for, if it is not.
fn moved(wanted: &Path, dir: &ClusterDir) -> Option<String> {
    let closed = dir.closed_parent.as_ref()?;
    Some(format!(
        "(not in {}: the `postgres` user, which runs PostgreSQL, cannot enter {})",
        wanted.display(),
        closed.display()
    ))
}

fn config(
    url: &str,
    app_dir: PathBuf,
    common: &Common,
    identity: Identity,
    origins: AllowedOrigins,
) -> Config {
    let mut config = Config::new(url);
    config.app_dir = Some(app_dir);
    config.listen = SocketAddr::new(common.listen, common.port);
    config.identity = identity;
    config.origins = origins;
    config.knobs = common.knobs();
    config.client_dir = common.client_dir.clone().or_else(default_client_dir);
    config.content_security_policy = common.content_security_policy.clone();
    if config.client_dir.is_none() {
        tracing::warn!("no built browser client found: /_mjolnir/mjolnir.js will not work");
    }
    config
}

/// An installed server keeps the client beside its executable; one run from the repository
/// finds the one `js/build.mjs` built.
fn default_client_dir() -> Option<PathBuf> {
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("mjolnir-web")));
    let in_repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../js/dist"));
    [beside_exe, Some(in_repo)]
        .into_iter()
        .flatten()
        .find(|dir| dir.join("mjolnir.js").is_file())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a Ctrl-C that comes while PostgreSQL starts, or
/// just after the address is printed, must stop the server and then `mjolnir dev`'s
/// PostgreSQL, not kill the process with the default action and leave PostgreSQL running.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Identity, clap::Error> {
        let argv = ["mjolnir", "serve", "--database-url", "postgres://db", "app"];
        match Cli::try_parse_from(argv.iter().chain(args))?.command {
            Command::Serve { proxy, .. } => Ok(proxy.identity()),
            Command::Dev { .. } | Command::Pg(_) => unreachable!("serve was asked for"),
        }
    }

    #[test]
    fn a_user_header_needs_trusted_proxies_and_the_reverse() {
        for half in [
            &["--user-header", "X-Forwarded-User"][..],
            &["--trusted-proxy", "10.0.0.5"],
        ] {
            let error = serve(half).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{half:?}: {error}"
            );
        }
        let both = [
            "--user-header",
            "X-Forwarded-User",
            "--trusted-proxy",
            "10.0.0.5",
            "--trusted-proxy",
            "10.1.0.0/16",
        ];
        let Identity::ProxyHeader { name, proxies } = serve(&both).unwrap() else {
            panic!("a proxy identity");
        };
        assert_eq!(name, "x-forwarded-user");
        assert_eq!(proxies.to_string(), "10.0.0.5, 10.1.0.0/16");
        assert!(serve(&["--user-header", "X-User", "--trusted-proxy", "proxy.lan"]).is_err());
    }

    #[test]
    fn without_identity_options_serve_is_anonymous() {
        assert_eq!(serve(&[]).unwrap(), Identity::Anonymous);
    }
}
