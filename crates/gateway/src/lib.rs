//! live-gateway: a Socket.IO gateway for live streaming, compatible with the official
//! `socket.io-client`.
//!
//! Layout: [`args`] turns flags and environment into [`args::Settings`]; [`server::run`] wires the
//! parts and serves the public Socket.IO listener and the admin listener ([`bridge`]) through
//! [`listener`] (connection caps and timeouts) until its shutdown future resolves, then drains
//! ([`drain`]). The protocol lives in [`protocol`] (pure parsing and payload shapes) and
//! [`realtime`] (the Socket.IO handlers), with [`handshake`] checks and a per-socket
//! [`session`]. Decisions are pure and take time as an argument: [`auth`] (JWT keys, rotation
//! and token rules), [`lifecycle`] (token expiry, refresh and key retirement on live
//! connections), [`ratelimit`], [`budget`] (events per connection), [`moderation`] (mutes),
//! [`trust`] (host and moderator rights), [`sanitize`], [`presence`] (coalescing for large
//! rooms), [`churn`] (join/leave damping), [`client_ip`] (sources behind proxies),
//! [`logsample`]. [`history`] keeps each channel's recent items for recovery on reconnect.
//! [`cluster`] runs many replicas as one. Shared state is [`state::AppState`];
//! configuration and its hot reload are in
//! [`config`]; every metric is defined in [`metrics`]; every error in [`error`].

pub mod admit;
pub mod args;
pub mod auth;
pub mod bridge;
pub mod budget;
pub mod churn;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod console;
pub mod dev;
pub mod drain;
pub mod error;
pub mod handshake;
pub mod history;
pub mod lifecycle;
pub mod listener;
pub mod logsample;
pub mod metrics;
pub mod moderation;
pub mod order;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod realtime;
pub mod sanitize;
pub mod server;
pub mod session;
pub mod state;
pub mod trust;

pub use error::{Error, Result};
