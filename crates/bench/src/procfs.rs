//! The server's resident memory and CPU time, read from `/proc/PID/status` and
//! `/proc/PID/stat`. The parsers are pure; the readers are one-line IO shells.

use std::io;

/// Clock ticks per second of the `utime`/`stime` fields. Linux fixes `USER_HZ` at 100 for every
/// architecture's user ABI, whatever the kernel's internal `HZ`.
pub const TICKS_PER_SEC: u64 = 100;

/// `VmRSS` in kB from the text of `/proc/PID/status`.
pub fn parse_vm_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `utime + stime` in ticks from the text of `/proc/PID/stat`. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards: utime is field 14, stime field 15.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Host-wide CPU ticks by kind, from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostCpu {
    /// user + system + steal: work at normal priority (the server and the bench are in here).
    pub busy: u64,
    /// Work at a lowered priority (`nice`), such as background builds: it yields to the
    /// server and the bench, so it disturbs them much less than `busy` work would.
    pub niced: u64,
    /// irq + softirq: mostly loopback TCP processing of the bench's own traffic, which the
    /// kernel charges to no process.
    pub irq: u64,
}

impl HostCpu {
    /// Ticks spent between `self` and a later reading, per kind.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(earlier.busy),
            niced: self.niced.saturating_sub(earlier.niced),
            irq: self.irq.saturating_sub(earlier.irq),
        }
    }
}

/// Parses the text of `/proc/stat`.
pub fn parse_host_cpu(stat: &str) -> Option<HostCpu> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = f[..] else {
        return None;
    };
    Some(HostCpu {
        busy: user + system + steal,
        niced: nice,
        irq: irq + softirq,
    })
}

/// Reads the host's CPU ticks.
pub fn read_host_cpu() -> io::Result<HostCpu> {
    let text = std::fs::read_to_string("/proc/stat")?;
    parse_host_cpu(&text).ok_or_else(|| io::Error::other("unparsable /proc/stat"))
}

/// The 1-minute load average from the text of `/proc/loadavg`. The bench shares the machine, so
/// each round records it: other work on the cores shows up as latency.
pub fn parse_loadavg_1m(loadavg: &str) -> Option<f64> {
    loadavg.split_whitespace().next()?.parse().ok()
}

/// Reads the 1-minute load average.
pub fn read_loadavg_1m() -> io::Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    parse_loadavg_1m(&text).ok_or_else(|| io::Error::other("unparsable /proc/loadavg"))
}

/// Ticks to seconds.
pub fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / TICKS_PER_SEC as f64
}

/// `pid` as a `/proc` entry name; `None` means this process (`self`).
fn proc_dir(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    }
}

/// Reads `VmRSS` of `pid` (or of this process) in kB.
pub fn read_rss_kb(pid: Option<u32>) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("{}/status", proc_dir(pid)))?;
    parse_vm_rss_kb(&text).ok_or_else(|| io::Error::other("no VmRSS line in /proc status"))
}

/// Reads `utime + stime` of `pid` (or of this process) in ticks.
pub fn read_cpu_ticks(pid: Option<u32>) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("{}/stat", proc_dir(pid)))?;
    parse_cpu_ticks(&text).ok_or_else(|| io::Error::other("unparsable /proc stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tlive-gateway\nVmPeak:\t  123456 kB\nVmRSS:\t   45678 kB\nRssAnon:\t   40000 kB\n";

    #[test]
    fn rss_is_read_from_the_vmrss_line_not_its_neighbours() {
        assert_eq!(parse_vm_rss_kb(STATUS), Some(45678));
    }

    #[test]
    fn a_status_without_rss_has_none() {
        assert_eq!(parse_vm_rss_kb("Name:\tkthreadd\nState:\tS\n"), None);
    }

    #[test]
    fn cpu_ticks_add_user_and_system_time() {
        let stat =
            "4242 (live-gateway) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn a_process_name_with_spaces_and_parens_does_not_shift_the_fields() {
        let stat = "7 (a b) (c)) R 1 7 7 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(33));
    }

    #[test]
    fn a_truncated_stat_has_none() {
        assert_eq!(parse_cpu_ticks("7 (x) R 1 2 3"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn host_cpu_separates_normal_niced_and_interrupt_time() {
        let stat = "cpu  100 10 20 500 5 1 2 3 0 0\ncpu0 50 5 10 250 2 0 1 1 0 0\n";
        assert_eq!(
            parse_host_cpu(stat),
            Some(HostCpu {
                busy: 123,
                niced: 10,
                irq: 3
            })
        );
        assert_eq!(parse_host_cpu("intr 1 2 3\n"), None);
        assert_eq!(parse_host_cpu("cpu  1 2 3\n"), None);
    }

    #[test]
    fn host_cpu_differences_never_go_negative() {
        let later = HostCpu {
            busy: 10,
            niced: 5,
            irq: 1,
        };
        let earlier = HostCpu {
            busy: 4,
            niced: 7,
            irq: 1,
        };
        assert_eq!(
            later.since(earlier),
            HostCpu {
                busy: 6,
                niced: 0,
                irq: 0
            }
        );
    }

    #[test]
    fn the_load_average_is_the_first_field() {
        assert_eq!(parse_loadavg_1m("1.72 1.72 1.42 3/103 31252\n"), Some(1.72));
        assert_eq!(parse_loadavg_1m(""), None);
    }

    #[test]
    fn ticks_are_hundredths_of_a_second() {
        assert!((ticks_to_secs(250) - 2.5).abs() < 1e-12);
    }
}
