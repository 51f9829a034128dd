//! Load generator for live-gateway: many Socket.IO clients over WebSocket in one process, chat
//! fan-out at a paced rate, end-to-end latency and the server's cost per connection and per
//! delivery.
//!
//! Layout: the pure parts are `engineio` (wire framing), `stamp` (send time inside the chat
//! text), `plan` (who joins which channel and who sends), `pacing` (when each sender sends),
//! `stats` (percentiles), `search` (the saturation step-up), `replicas` (which gateway replica each
//! connection uses), `report` (the summary), `procfs` (the servers' RSS and CPU time) and
//! `redis_stats` (Redis's network byte counters). The IO shell is `client`
//! (one task per connection) and `run` (the scenarios: phases, progress and the JSON report).
//! `args` turns the command line into a scenario and a runtime. `abuse` runs the attacks of
//! issue 11 against a gateway while honest members chat. `history` switches the gateway's
//! channel history on or off for a run and probes which it is; `recover` is the scenario of
//! viewers recovering a gap after a mass reconnect.

pub mod abuse;
pub mod args;
pub mod client;
pub mod engineio;
pub mod history;
pub mod pacing;
pub mod plan;
pub mod procfs;
pub mod reconnect_storm;
pub mod recover;
pub mod redis_stats;
pub mod replicas;
pub mod report;
pub mod run;
pub mod search;
pub mod stamp;
pub mod stats;
