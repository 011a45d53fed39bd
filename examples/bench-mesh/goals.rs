//! Issue 21's goals, each beside this run's figure.

use ambit_testbed::median;

use crate::report::Results;

/// One of issue 21's goals and where this run stands.
pub(crate) struct Goal {
    pub(crate) name: &'static str,
    pub(crate) value: String,
    pub(crate) goal: &'static str,
    pub(crate) met: bool,
}

impl Results {
    /// Every figure beside its goal (ratios and added latencies from the
    /// medians of this run).
    pub(crate) fn goals(&self) -> Vec<Goal> {
        let ratio = |(d, m): &(Vec<f64>, Vec<f64>)| median(m) / median(d);
        let added = |(d, m): &(Vec<f64>, Vec<f64>)| median(m) - median(d);
        let procs = self.procs.max(1) as f64;
        let cpu = median(&self.cpu_s_per_gb);
        let idle_mb = self.rss_idle_kib as f64 / procs / 1024.0;
        let bulk_mb = self.rss_bulk_kib as f64 / procs / 1024.0;
        let mem = self.memory;
        let mut g = vec![
            Goal {
                name: "bulk vs direct",
                value: format!("{:.2}x", ratio(&self.bulk)),
                goal: ">= 0.40x",
                met: ratio(&self.bulk) >= 0.40,
            },
            Goal {
                name: "added 1-byte RTT p50",
                value: format!("{:.0} µs", added(&self.rtt_p50)),
                goal: "<= 50 µs",
                met: added(&self.rtt_p50) <= 50.0,
            },
            Goal {
                name: "added 1-byte RTT p99",
                value: format!("{:.0} µs", added(&self.rtt_p99)),
                goal: "<= 250 µs",
                met: added(&self.rtt_p99) <= 250.0,
            },
            Goal {
                name: "new connections/s, 1 client",
                value: format!("{:.2}x", ratio(&self.conn_seq)),
                goal: ">= 0.40x",
                met: ratio(&self.conn_seq) >= 0.40,
            },
            Goal {
                name: "new connections/s, 4 clients",
                value: format!("{:.2}x", ratio(&self.conn_par)),
                goal: ">= 0.50x",
                met: ratio(&self.conn_par) >= 0.50,
            },
            Goal {
                name: "CPU per GB (all ztunnels)",
                value: format!("{cpu:.2} s"),
                goal: "<= 0.8 s",
                met: cpu <= 0.8,
            },
            Goal {
                name: "RSS idle, per ztunnel",
                value: format!("{idle_mb:.1} MB"),
                goal: "<= 10 MB",
                met: idle_mb <= 10.0,
            },
            Goal {
                name: "RSS under bulk, per ztunnel",
                value: format!("{bulk_mb:.1} MB"),
                goal: "<= 20 MB",
                met: bulk_mb <= 20.0,
            },
        ];
        if mem.idle_conns > 0 {
            g.push(Goal {
                name: "memory per idle proxied connection, per ztunnel",
                value: format!("{:.1} KiB", mem.per_conn_bytes / 1024.0),
                goal: "<= 8 KiB",
                met: mem.per_conn_bytes <= 8192.0,
            });
        }
        if mem.streams > 0 {
            let mb = mem.streams_rss_kib / 1024.0;
            g.push(Goal {
                name: "RSS with 10,000 concurrent streams, per ztunnel",
                value: if mem.streams_held < mem.streams {
                    format!("{mb:.1} MB (from {})", mem.streams_held)
                } else {
                    format!("{mb:.1} MB")
                },
                goal: "<= 100 MB",
                met: mb <= 100.0,
            });
        }
        g
    }
}
