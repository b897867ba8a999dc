//! Kubernetes resource quantities (`500m`, `4`, `8Gi`, `1e3`), parsed into thousandths
//! of a unit so that the scheduler compares them exactly.

/// The largest quantity the fake accepts, in thousandths: far above any node's.
const MAX_MILLI: i128 = 1 << 100;

/// Parses a quantity into thousandths of a unit, rounded up as the API server rounds.
/// Returns `None` for text that is not a quantity.
pub(crate) fn parse_milli(text: &str) -> Option<i128> {
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    let (sign, body) = match text.as_bytes()[0] {
        b'-' => (-1, &text[1..]),
        b'+' => (1, &text[1..]),
        _ => (1, text),
    };
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // (numerator multiplier, power of ten dividing it).
    let (multiplier, ten_power): (i128, i32) = match suffix {
        "" => (1, 0),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().ok()?;
            if !(-18..=18).contains(&power) {
                return None;
            }
            (1, power)
        }
        _ => return None,
    };
    let digits = format!("{whole}{fraction}");
    if digits.len() > 30 {
        return None;
    }
    let mantissa: i128 = digits.parse().ok()?;
    // value = mantissa * multiplier * 10^(ten_power - fraction digits); in thousandths.
    let scale = ten_power + 3 - i32::try_from(fraction.len()).ok()?;
    let scaled = if scale >= 0 {
        mantissa
            .checked_mul(multiplier)?
            .checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?
    } else {
        let divisor = 10i128.checked_pow(u32::try_from(-scale).ok()?)?;
        let numerator = mantissa.checked_mul(multiplier)?;
        (numerator + divisor - 1) / divisor
    };
    (scaled <= MAX_MILLI).then_some(sign * scaled)
}

#[cfg(test)]
mod tests {
    use super::parse_milli;

    #[test]
    fn parses_the_api_servers_forms() {
        assert_eq!(parse_milli("4"), Some(4000));
        assert_eq!(parse_milli("500m"), Some(500));
        assert_eq!(parse_milli("0.5"), Some(500));
        assert_eq!(parse_milli("1.5Gi"), Some(3 * (1 << 29) * 1000));
        assert_eq!(parse_milli("8Gi"), Some(8 * (1i128 << 30) * 1000));
        assert_eq!(parse_milli("1k"), Some(1_000_000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("0.0001"), Some(1));
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for text in ["", "2x", "Gi", ".", "1.2.3", "1e99", "4 cpu", "1..0"] {
            assert_eq!(parse_milli(text), None, "{text}");
        }
    }
}
