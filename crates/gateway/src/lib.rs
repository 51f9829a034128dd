//! live-gateway: a Socket.IO gateway for live streaming, compatible with the official
//! `socket.io-client`.
//!
//! Layout: [`args`] turns flags and environment into [`args::Settings`]; [`server::run`] wires the
//! parts and serves the public Socket.IO listener and the admin listener ([`bridge`]) until its
//! shutdown future resolves, then drains ([`drain`]). The protocol lives in [`protocol`] (pure
//! parsing and payload shapes) and [`realtime`] (the Socket.IO handlers). Decisions are pure and
//! take time as an argument: [`auth`] (JWT), [`ratelimit`], [`moderation`] (mutes),
//! [`sanitize`], [`presence`] (coalescing for large rooms). [`cluster`] runs many replicas as one. Shared state is [`state::AppState`]; configuration and its hot reload are in
//! [`config`]; every metric is defined in [`metrics`]; every error in [`error`].

pub mod args;
pub mod auth;
pub mod bridge;
pub mod cluster;
pub mod config;
pub mod console;
pub mod dev;
pub mod drain;
pub mod error;
pub mod metrics;
pub mod moderation;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod realtime;
pub mod sanitize;
pub mod server;
pub mod state;

pub use error::{Error, Result};
