//! The run's figures: the table printed at the end and the JSON written
//! beside it.

use ambit_testbed::median;
use serde_json::json;

use crate::{Args, memory};

/// A measure's name, its (direct, meshed) rounds, and whether higher is better.
pub(crate) type Row<'a> = (&'static str, &'a (Vec<f64>, Vec<f64>), bool);

/// Figures of one run.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) mode: &'static str,
    pub(crate) bulk: (Vec<f64>, Vec<f64>),
    pub(crate) rtt_p50: (Vec<f64>, Vec<f64>),
    pub(crate) rtt_p99: (Vec<f64>, Vec<f64>),
    pub(crate) conn_seq: (Vec<f64>, Vec<f64>),
    pub(crate) conn_par: (Vec<f64>, Vec<f64>),
    pub(crate) rss_idle_kib: u64,
    pub(crate) rss_bulk_kib: u64,
    pub(crate) cpu_s_per_gb: Vec<f64>,
    /// ztunnel CPU per meshed connection in the 4-client rounds, µs (all
    /// ztunnels together).
    pub(crate) cpu_us_per_conn: Vec<f64>,
    /// ztunnel processes measured (RSS figures are per process).
    pub(crate) procs: usize,
    pub(crate) memory: memory::Memory,
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

impl Results {
    fn rows(&self) -> Vec<Row<'_>> {
        // (name, (direct, meshed), higher is better)
        vec![
            ("bulk, 1 connection, MB/s", &self.bulk, true),
            ("1-byte round trip p50, µs", &self.rtt_p50, false),
            ("1-byte round trip p99, µs", &self.rtt_p99, false),
            ("new connections/s, 1 client", &self.conn_seq, true),
            ("new connections/s, 4 clients", &self.conn_par, true),
        ]
    }

    pub(crate) fn to_json(&self, args: &Args) -> serde_json::Value {
        let mut metrics = serde_json::Map::new();
        for (name, (d, m), higher) in self.rows() {
            let (dmin, dmax) = min_max(d);
            let (mmin, mmax) = min_max(m);
            metrics.insert(
                name.into(),
                json!({
                    "direct": {"median": median(d), "min": dmin, "max": dmax, "rounds": d},
                    "meshed": {"median": median(m), "min": mmin, "max": mmax, "rounds": m},
                    "ratio": median(m) / median(d),
                    "higher_is_better": higher,
                }),
            );
        }
        let (cmin, cmax) = min_max(&self.cpu_s_per_gb);
        let (pmin, pmax) = min_max(&self.cpu_us_per_conn);
        let goals: Vec<_> = self
            .goals()
            .into_iter()
            .map(|g| json!({"measure": g.name, "value": g.value, "goal": g.goal, "met": g.met}))
            .collect();
        json!({
            "mode": self.mode,
            "goals": goals,
            "memory": {
                "idle_connections": self.memory.idle_conns,
                "bytes_per_idle_connection_per_ztunnel": self.memory.per_conn_bytes,
                "streams": self.memory.streams,
                "streams_held": self.memory.streams_held,
                "rss_with_streams_kib_per_ztunnel": self.memory.streams_rss_kib,
            },
            "rounds": args.rounds,
            "bulk_bytes": (args.bulk_mib as u64) << 20,
            "metrics": metrics,
            "ztunnel": {
                "rss_idle_kib": self.rss_idle_kib,
                "rss_under_bulk_kib": self.rss_bulk_kib,
                "cpu_seconds_per_gb": {"median": median(&self.cpu_s_per_gb), "min": cmin, "max": cmax, "rounds": self.cpu_s_per_gb},
                "cpu_us_per_connection_4_clients": {"median": median(&self.cpu_us_per_conn), "min": pmin, "max": pmax, "rounds": self.cpu_us_per_conn},
            },
        })
    }
}

pub(crate) fn print_table(r: &Results, args: &Args) {
    println!(
        "\nbench-mesh ({}; {} rounds each, direct and meshed alternating; medians, [min–max])",
        r.mode, args.rounds
    );
    println!(
        "{:<30} {:>24} {:>24} {:>8}",
        "measure", "direct", "meshed", "ratio"
    );
    for (name, (d, m), _) in r.rows() {
        let (dmin, dmax) = min_max(d);
        let (mmin, mmax) = min_max(m);
        let f = |x: f64| {
            if x >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        };
        println!(
            "{:<30} {:>24} {:>24} {:>7.2}x",
            name,
            format!("{} [{}–{}]", f(median(d)), f(dmin), f(dmax)),
            format!("{} [{}–{}]", f(median(m)), f(mmin), f(mmax)),
            median(m) / median(d)
        );
    }
    let (cmin, cmax) = min_max(&r.cpu_s_per_gb);
    println!(
        "ztunnel ({} process{}) RSS: idle {:.1} MB, under bulk {:.1} MB (peak); CPU {:.2} s/GB [{:.2}–{:.2}]",
        r.procs,
        if r.procs == 1 { "" } else { "es" },
        r.rss_idle_kib as f64 / 1024.0,
        r.rss_bulk_kib as f64 / 1024.0,
        median(&r.cpu_s_per_gb),
        cmin,
        cmax
    );
    let (pmin, pmax) = min_max(&r.cpu_us_per_conn);
    println!(
        "ztunnel CPU per meshed connection, 4 clients: {:.0} µs [{:.0}–{:.0}]",
        median(&r.cpu_us_per_conn),
        pmin,
        pmax
    );
    println!("\ngoals (issue 21), this run:");
    println!("{:<50} {:>22} {:>10}  met", "measure", "value", "goal");
    for g in r.goals() {
        println!(
            "{:<50} {:>22} {:>10}  {}",
            g.name,
            g.value,
            g.goal,
            if g.met { "yes" } else { "no" }
        );
    }
}
