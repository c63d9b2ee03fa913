//! Kubernetes resource quantities compared as numbers. The API server stores a
//! quantity in canonical form (`2000` comes back as `2k`, `1024Mi` as `1Gi`), so
//! a desired quantity compared with the live one as text differs for ever and the
//! object is rewritten at every reconcile.

/// The value of `s` in units of 10⁻⁹ (nano), or `None` if `s` is not a quantity.
/// Grammar (k8s.io/apimachinery `resource.ParseQuantity`): an optional sign, a
/// decimal number, then a binary suffix (`Ki` … `Ei`), a decimal suffix (`n`, `u`,
/// `m`, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`).
pub fn nanos(s: &str) -> Option<i128> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // The number as digits × 10^-scale.
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = i32::try_from(fraction.len()).ok()?;
    let (binary, exponent): (u32, i32) = match suffix {
        "" => (0, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        e if e.starts_with(['e', 'E']) => (0, e[1..].parse().ok()?),
        _ => return None,
    };
    // digits × 2^binary × 10^(exponent - scale + 9), rounded towards zero below a nano.
    let mut value = digits.checked_mul(1i128.checked_shl(binary)?)?;
    let power = exponent - scale + 9;
    if power >= 0 {
        value = value.checked_mul(10i128.checked_pow(u32::try_from(power).ok()?)?)?;
    } else {
        value /= 10i128.checked_pow(u32::try_from(-power).ok()?)?;
    }
    Some(if negative { -value } else { value })
}

/// Whether `a` and `b` are the same quantity (`2000` and `2k`, `1Gi` and
/// `1024Mi`); text that is not a quantity is the same only if equal.
pub fn same(a: &str, b: &str) -> bool {
    a == b || matches!((nanos(a), nanos(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_canonical_forms_equal_what_was_asked_for() {
        for (asked, stored) in [
            ("2000", "2k"),
            ("4000", "4k"),
            ("120", "120"),
            ("1024Mi", "1Gi"),
            ("0.5", "500m"),
            ("1.5Gi", "1536Mi"),
            ("1e3", "1k"),
            ("100Ti", "100Ti"),
            ("0", "0"),
        ] {
            assert!(same(asked, stored), "{asked} = {stored}");
        }
    }

    #[test]
    fn different_amounts_and_text_that_is_no_quantity_differ() {
        assert!(!same("2000", "2Ki"));
        assert!(!same("1G", "1Gi"));
        assert!(!same("8", "16"));
        assert!(!same("abc", "abd"));
        assert!(same("abc", "abc"));
        for bad in ["", "-", "1.2.3", "1Kb", "k", "1 k", ".", "1e"] {
            assert_eq!(nanos(bad), None, "{bad:?}");
        }
        assert_eq!(nanos("-1m"), Some(-1_000_000));
        assert_eq!(nanos("1n"), Some(1));
        assert_eq!(nanos("+2"), Some(2_000_000_000));
    }
}
