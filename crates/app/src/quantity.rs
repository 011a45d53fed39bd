//! Kubernetes resource quantities as the binaries size themselves by them.

use anyhow::Context;

/// A Kubernetes CPU quantity (`2`, `1.5`, `500m`), as the downward API or
/// a chart writes a pod's CPU limit, as a whole CPU count: rounded up, at
/// least 1. `name` (the setting's name) is for the error message.
pub fn cpu_quantity(name: &str, v: &str) -> anyhow::Result<usize> {
    let cpus = match v.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => v.parse::<f64>(),
    }
    .ok()
    .filter(|c| c.is_finite() && *c > 0.0)
    .with_context(|| format!("{name}={v:?} is not a CPU quantity (`2`, `1.5`, `500m`)"))?;
    Ok((cpus.ceil() as usize).max(1))
}

/// The machine's CPU count (at least 1).
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_round_up() {
        assert_eq!(cpu_quantity("X", "2").expect("ok"), 2);
        assert_eq!(cpu_quantity("X", "1.5").expect("ok"), 2);
        assert_eq!(cpu_quantity("X", "1500m").expect("ok"), 2);
        assert_eq!(cpu_quantity("X", "100m").expect("ok"), 1);
        for bad in ["", "0", "-1", "lots", "NaN", "inf", "2x"] {
            let e = cpu_quantity("X", bad).expect_err(bad).to_string();
            assert!(e.contains("X=") && e.contains("CPU quantity"), "{e}");
        }
    }
}
