//! How the plugin writes times, durations and quantities.
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A duration as `kubectl get` writes ages: `45s`, `3m12s`, `42m`, `5h7m`, `3d4h`, `40d`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// How long ago `t` was.
pub fn age(t: &Time, now: Timestamp) -> String {
    duration(now.as_second() - t.0.as_second())
}

/// A time with how long ago it was: `2025-01-07T09:30:00Z (5m ago)`.
pub fn when(t: &Time, now: Timestamp) -> String {
    format!(
        "{} ({} ago)",
        t.0.strftime("%Y-%m-%dT%H:%M:%SZ"),
        age(t, now)
    )
}

/// GPUs of a gang: `16 (2x8)`.
pub fn gang(nodes: i32, gpus_per_node: i32) -> String {
    format!(
        "{} ({nodes}x{gpus_per_node})",
        i64::from(nodes) * i64::from(gpus_per_node)
    )
}

/// A quantity with one decimal.
pub fn decimal(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl_ages() {
        assert_eq!(duration(-3), "0s");
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(42 * 60 + 5), "42m");
        assert_eq!(duration(5 * 3600 + 7 * 60), "5h7m");
        assert_eq!(duration(30 * 3600), "30h");
        assert_eq!(duration(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(duration(40 * 86400), "40d");
    }

    #[test]
    fn a_gang_shows_its_total_and_its_shape() {
        assert_eq!(gang(2, 8), "16 (2x8)");
    }
}
