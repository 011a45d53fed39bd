//! What a run measured, and the table the `local-mesh` example prints.

use std::time::Duration;

use crate::httpapp::Resp;

/// Figures for one way of reaching the service.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Median round trip.
    pub p50: Duration,
    /// 99th percentile round trip.
    pub p99: Duration,
    /// Bulk throughput, MB/s.
    pub mbps: f64,
    /// Greetings seen (which backend answered, and the source it saw).
    pub greetings: Vec<String>,
}

impl Figures {
    /// Requests, errors (any status but 200) and latency of HTTP
    /// responses; bulk is not measured.
    pub fn of_http(rs: &[Resp]) -> Self {
        let mut lat: Vec<Duration> = rs
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.elapsed)
            .collect();
        lat.sort();
        let pick = |p: usize| {
            lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Self {
            requests: rs.len(),
            errors: rs.iter().filter(|r| r.status != 200).count(),
            p50: pick(50),
            p99: pick(99),
            mbps: 0.0,
            greetings: Vec::new(),
        }
    }
}

/// A table of figures, one row per way of reaching the service: a header,
/// then requests, errors, p50/p99 in µs and MB/s. Each line is indented
/// by two spaces; there is no trailing newline.
pub fn table(rows: &[(&str, &Figures)]) -> String {
    let mut lines = vec![format!(
        "  {:<24} {:>8} {:>7} {:>10} {:>10} {:>10}",
        "path", "requests", "errors", "p50 µs", "p99 µs", "MB/s"
    )];
    for (name, f) in rows {
        lines.push(format!(
            "  {name:<24} {:>8} {:>7} {:>10.0} {:>10.0} {:>10.0}",
            f.requests,
            f.errors,
            f.p50.as_secs_f64() * 1e6,
            f.p99.as_secs_f64() * 1e6,
            f.mbps
        ));
    }
    lines.join("\n")
}

/// The median of `v` (the upper one of an even count; 0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 50)
}

/// The `p`-th percentile of sorted `sorted` (nearest rank below; 0 when
/// empty).
pub fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, ms: u64) -> Resp {
        Resp {
            status,
            served_by: None,
            body: String::new(),
            headers: Vec::new(),
            elapsed: Duration::from_millis(ms),
            error: None,
        }
    }

    #[test]
    fn http_figures_count_errors_and_take_latency_of_successes() {
        let rs: Vec<Resp> = (1..=10)
            .map(|ms| resp(200, ms))
            .chain([resp(503, 999)])
            .collect();
        let f = Figures::of_http(&rs);
        assert_eq!((f.requests, f.errors), (11, 1));
        assert_eq!(f.p50, Duration::from_millis(6));
        assert_eq!(f.p99, Duration::from_millis(10));
        let none = Figures::of_http(&[]);
        assert_eq!((none.requests, none.p50), (0, Duration::ZERO));
    }

    #[test]
    fn table_has_a_header_and_a_row_per_path() {
        let f = Figures {
            requests: 200,
            errors: 1,
            p50: Duration::from_micros(150),
            p99: Duration::from_micros(900),
            mbps: 1234.4,
            greetings: Vec::new(),
        };
        let t = table(&[("direct (no mesh)", &f)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("  path "), "{t}");
        assert_eq!(
            lines[1],
            "  direct (no mesh)              200       1        150        900       1234"
        );
    }
}
