//! `live-operator`: parses the command line and hands over to the library.

use std::io::Read;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use live_operator::args::{Cli, Command, LogFormat, RenderArgs, RunArgs};
use live_operator::reconcile::Facts;
use live_operator::{admin, context, controller, crd, metrics, rbac, render};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => run(RunArgs::parse_from(["live-operator"])).await,
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Render(args)) => render_cmd(args),
        Some(Command::Crd) => {
            print!("{}", crd::crd_yaml());
            Ok(())
        }
        Some(Command::Rbac) => {
            print!("{}", rbac::cluster_role_yaml());
            Ok(())
        }
    }
}

fn render_cmd(args: RenderArgs) -> anyhow::Result<()> {
    let RenderArgs {
        file,
        namespace,
        service_monitor_crd,
        http_route_crd,
    } = args;
    let path = file.display().to_string();
    let text = if path == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        std::fs::read_to_string(&file).map_err(|source| live_operator::Error::ReadManifest {
            path: path.clone(),
            source,
        })?
    };
    let facts = Facts {
        service_monitor_crd,
        http_route_crd,
    };
    print!("{}", render::render(&path, &text, &namespace, facts)?);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        admin_listen,
        watch_namespace,
        resync_seconds,
        concurrency,
        leader_election,
        lease_name,
        lease_namespace,
        identity,
        log_format,
    } = args;
    let subscriber = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    match log_format {
        LogFormat::Json => subscriber.json().init(),
        LogFormat::Text => subscriber.init(),
    }

    let client = kube::Client::try_default()
        .await
        .map_err(live_operator::Error::Client)
        .context("no Kubernetes config (in-cluster or KUBECONFIG)")?;
    let identity = identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "live-operator".to_owned());
    let metrics = Arc::new(metrics::Metrics::new());
    let mut ctx = context::Context::new(client.clone(), Some(identity.clone()), metrics.clone());
    ctx.resync = std::time::Duration::from_secs(resync_seconds);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(admin::serve(
        admin_listen,
        admin::AdminState {
            metrics,
            ready: ready_rx,
        },
    ));
    let config = controller::RunConfig {
        namespace: watch_namespace,
        concurrency,
        leader_election: leader_election.then(|| controller::LeaderElection {
            lease_name,
            lease_namespace: lease_namespace
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        }),
        identity,
    };
    tokio::select! {
        result = controller::run(ctx, config, ready_tx) => result?,
        result = admin => result??,
    }
    Ok(())
}
