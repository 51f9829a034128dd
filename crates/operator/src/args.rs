//! The command line: `run` (default), `render -f FILE`, `crd` and `rbac`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

/// live-operator: reconciles LiveRealtime resources into live-gateway tiers.
#[derive(Debug, Parser)]
#[command(name = "live-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator (the default).
    Run(RunArgs),
    /// Print every child the operator would apply for the LiveRealtime(s) in a file, without a
    /// cluster.
    Render(RenderArgs),
    /// Print the LiveRealtime CustomResourceDefinition (crds/liverealtime.yaml).
    Crd,
    /// Print the ClusterRole with exactly the permissions the operator uses.
    Rbac,
}

/// Flags of `run`. With no subcommand they come from the environment alone.
#[derive(Debug, Clone, Parser)]
pub struct RunArgs {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "LIVE_OPERATOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "LIVE_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Seconds between reconciles of a settled object without a watch event (drift on the
    /// unwatched ServiceMonitor and HTTPRoute, optional-CRD discovery).
    #[arg(long, env = "LIVE_OPERATOR_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub resync_seconds: u64,
    /// LiveRealtime objects reconciled in parallel.
    #[arg(long, env = "LIVE_OPERATOR_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Elect a leader through a Lease, so several replicas can run.
    #[arg(long, env = "LIVE_OPERATOR_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "LIVE_OPERATOR_LEASE_NAME",
        default_value = "live-operator"
    )]
    pub lease_name: String,
    /// Namespace of the leader Lease (default: the client's namespace, i.e. the pod's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease and in events (default: the hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format.
    #[arg(long, env = "LIVE_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Flags of `render`.
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// A YAML file with one or more LiveRealtime documents (`-` for stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Namespace for objects without one.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Render as if the ServiceMonitor CRD were installed.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub service_monitor_crd: bool,
    /// Render as if the Gateway API HTTPRoute CRD were installed.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub http_route_crd: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_subcommand_means_run() {
        let cli = Cli::try_parse_from(["live-operator"]).unwrap();
        assert!(cli.command.is_none());
        let run = RunArgs::try_parse_from(["live-operator"]).unwrap();
        assert_eq!(run.concurrency, 4);
        assert!(run.leader_election);
    }

    #[test]
    fn render_takes_a_file() {
        let cli = Cli::try_parse_from(["live-operator", "render", "-f", "x.yaml"]).unwrap();
        let Some(Command::Render(args)) = cli.command else {
            panic!("expected render");
        };
        assert_eq!(args.file, PathBuf::from("x.yaml"));
        assert!(args.service_monitor_crd);
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
