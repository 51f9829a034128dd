//! `live-bench`: the load generator for live-gateway. Parses the flags and hands over to the
//! library; everything else lives in `live_bench`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    live_bench::args::Args::parse().run()
}
