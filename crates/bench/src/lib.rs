//! Load generator for live-gateway: many Socket.IO clients over WebSocket in one process, chat
//! fan-out at a paced rate, end-to-end latency and the server's cost per connection and per
//! delivery.
//!
//! Layout: the pure parts are `engineio` (wire framing), `stamp` (send time inside the chat
//! text), `plan` (who joins which channel and who sends), `pacing` (when each sender sends),
//! `stats` (percentiles), `search` (the saturation step-up), `report` (the summary) and `procfs` (the server's RSS and CPU time). The IO shell is `client`
//! (one task per connection) and `run` (the scenarios: phases, progress and the JSON report).
//! `args` turns the command line into a scenario and a runtime.

pub mod args;
pub mod client;
pub mod engineio;
pub mod pacing;
pub mod plan;
pub mod procfs;
pub mod reconnect_storm;
pub mod report;
pub mod run;
pub mod search;
pub mod stamp;
pub mod stats;
