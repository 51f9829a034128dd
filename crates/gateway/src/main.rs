//! The `live-gateway` binary: parses flags, sets up logging, binds the listeners and runs the
//! server until SIGTERM or SIGINT.

use clap::Parser;
use live_gateway::args::Args;
use live_gateway::auth::KeyMaterial;
use live_gateway::{dev, server};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);
    let mut generated = None;
    let settings = args.settings(|| {
        let s = dev::generate_secret();
        generated = Some(s.clone());
        s
    })?;
    let public = TcpListener::bind(settings.listen).await?;
    let admin = TcpListener::bind(settings.admin_listen).await?;
    if args.dev {
        if let Some(KeyMaterial::Hs256Secret(secret)) = &settings.auth.key {
            let tokens = dev::tokens(secret, &settings.auth.policy);
            print!(
                "{}",
                dev::banner(
                    generated.as_deref(),
                    &tokens,
                    public.local_addr()?,
                    admin.local_addr()?
                )
            );
        } else {
            tracing::warn!("--dev without JWT_SECRET's HS256 key: no tokens can be printed");
        }
    }
    server::run(settings, public, admin, shutdown_signal()).await?;
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process can only be killed; never return early.
            std::future::pending::<()>().await;
        }
    }
}
