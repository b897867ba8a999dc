//! Money: exact amounts of the operator's currency, in micro-units.
//!
//! Prices are written as decimal numbers (`cpu_hour: 0.04`) and costs are summed
//! over many pieces of usage; an `f64` would make those sums depend on their order.
//! An amount is an `i64` of micro-units (1 = 0.000001), so sums are exact and
//! associative, and every rounding happens once, where a cost is computed
//! ([`crate::pool::Price::cost`]). Arithmetic is checked or saturating, never
//! wrapping.

use std::fmt;
use std::iter::Sum;

/// Micro-units in one unit of currency.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// The largest number of units [`Money::from_units`] accepts: far above any bill,
/// and small enough that an `f64` of it keeps its cents.
pub const MAX_UNITS: f64 = 1e12;

/// An exact amount of money, in micro-units of the operator's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Money(i64);

/// A number that is not an amount of money: negative, not finite, or too large.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{value} is not an amount of money (a number zero or more, at most {MAX_UNITS:.0})")]
pub struct MoneyError {
    /// The number as it was given.
    pub value: f64,
}

impl Money {
    /// Nothing.
    pub const ZERO: Money = Money(0);
    /// The most an amount holds; saturating arithmetic stops here.
    pub const MAX: Money = Money(i64::MAX);

    /// An amount of `micros` micro-units.
    pub const fn from_micros(micros: i64) -> Money {
        Money(micros)
    }

    /// A whole number of units (saturating).
    pub const fn from_whole_units(units: i64) -> Money {
        Money(units.saturating_mul(MICROS_PER_UNIT))
    }

    /// Parses a non-negative decimal number of units (as read from YAML or JSON),
    /// rounded to the nearest micro-unit.
    pub fn from_units(value: f64) -> Result<Money, MoneyError> {
        if !(0.0..=MAX_UNITS).contains(&value) {
            return Err(MoneyError { value });
        }
        // Within MAX_UNITS the product is at most 1e18, inside i64.
        Ok(Money((value * MICROS_PER_UNIT as f64).round() as i64))
    }

    /// The amount in micro-units.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// The amount in units, as a float: for charts and metrics, never for sums.
    pub fn to_units_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_UNIT as f64
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// `self - other`, or `None` on overflow.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    /// `self + other`, clamped at the bounds of `i64` micro-units.
    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// `self - other`, clamped at the bounds of `i64` micro-units.
    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// An amount of micro-units held in a wider integer, clamped into range.
    pub fn saturating_from_i128(micros: i128) -> Money {
        Money(i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX }))
    }
}

impl Sum for Money {
    /// Saturating, like [`Money::saturating_add`].
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Money::saturating_add)
    }
}

impl fmt::Display for Money {
    /// Exactly, with two decimals at least and up to six: `483.10`, `0.000417`,
    /// `-0.01`, `12.345678`. Money is kept to the micro-unit, so nothing is
    /// rounded: a small cost never shows as `0.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.unsigned_abs();
        let sign = if self.0 < 0 { "-" } else { "" };
        let units = micros / MICROS_PER_UNIT.unsigned_abs();
        let fraction = format!("{:06}", micros % MICROS_PER_UNIT.unsigned_abs());
        let fraction = fraction.trim_end_matches('0');
        write!(f, "{sign}{units}.{fraction:0<2}")
    }
}

/// Serde for an amount written as a number of units (`monthly: 500`, `12.5`), as
/// in specs; with `#[serde(with = "crate::money::units")]`.
pub mod units {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;

    use super::{MICROS_PER_UNIT, Money};

    /// A whole number of units as an integer, anything else as a float.
    pub fn serialize<S: Serializer>(money: &Money, s: S) -> Result<S::Ok, S::Error> {
        if money.micros() % MICROS_PER_UNIT == 0 {
            s.serialize_i64(money.micros() / MICROS_PER_UNIT)
        } else {
            s.serialize_f64(money.to_units_f64())
        }
    }

    struct UnitsVisitor;

    impl Visitor<'_> for UnitsVisitor {
        type Value = Money;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an amount of money, a number such as 500 or 12.5")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
            self.visit_f64(v as f64)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
            self.visit_f64(v as f64)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
            Money::from_units(v).map_err(E::custom)
        }
    }

    /// Reads a non-negative number of units (see [`Money::from_units`]).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Money, D::Error> {
        d.deserialize_any(UnitsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn displays_every_micro_unit_with_two_decimals_at_least() {
        let cases = [
            (483_100_000, "483.10"),
            (0, "0.00"),
            (417, "0.000417"),
            (4_999, "0.004999"),
            (5_000, "0.005"),
            (12_400_000, "12.40"),
            (12_345_678, "12.345678"),
            (-5_000, "-0.005"),
            (-1_500_000, "-1.50"),
            (i64::MAX, "9223372036854.775807"),
            (i64::MIN, "-9223372036854.775808"),
        ];
        for (micros, text) in cases {
            assert_eq!(Money::from_micros(micros).to_string(), text, "{micros}");
        }
    }

    #[test]
    fn parses_non_negative_decimals() {
        assert_eq!(Money::from_units(500.0), Ok(Money::from_whole_units(500)));
        assert_eq!(Money::from_units(0.04), Ok(Money::from_micros(40_000)));
        assert_eq!(
            Money::from_units(483.1),
            Ok(Money::from_micros(483_100_000))
        );
        assert_eq!(Money::from_units(0.0000004), Ok(Money::ZERO));
        assert_eq!(
            Money::from_units(1e12),
            Ok(Money::from_whole_units(1_000_000_000_000))
        );
        for bad in [-0.01, f64::NAN, f64::INFINITY, 1.5e12] {
            let err = Money::from_units(bad).expect_err("not money");
            assert_eq!(err.value.to_bits(), bad.to_bits());
        }
        assert_eq!(
            Money::from_units(-5.0).expect_err("negative").to_string(),
            "-5 is not an amount of money (a number zero or more, at most 1000000000000)"
        );
    }

    #[test]
    fn arithmetic_saturates_or_reports_overflow() {
        let one = Money::from_whole_units(1);
        assert_eq!(one.checked_add(one), Some(Money::from_whole_units(2)));
        assert_eq!(Money::MAX.checked_add(one), None);
        assert_eq!(Money::MAX.saturating_add(one), Money::MAX);
        assert_eq!(
            Money::ZERO.saturating_sub(one),
            Money::from_micros(-1_000_000)
        );
        assert_eq!(Money::from_micros(i64::MIN).checked_sub(one), None);
        assert_eq!([Money::MAX, one].into_iter().sum::<Money>(), Money::MAX);
        assert_eq!(Money::saturating_from_i128(i128::MAX), Money::MAX);
        assert_eq!(
            Money::saturating_from_i128(i128::MIN),
            Money::from_micros(i64::MIN)
        );
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Doc {
        #[serde(with = "units")]
        amount: Money,
    }

    #[test]
    fn units_read_numbers_and_write_them_back() {
        let doc: Doc = serde_json::from_str(r#"{"amount": 500}"#).expect("integer");
        assert_eq!(doc.amount, Money::from_whole_units(500));
        assert_eq!(
            serde_json::to_string(&doc).expect("json"),
            r#"{"amount":500}"#
        );
        let doc: Doc = serde_json::from_str(r#"{"amount": 12.4}"#).expect("float");
        assert_eq!(
            serde_json::to_string(&doc).expect("json"),
            r#"{"amount":12.4}"#
        );
        let err = serde_json::from_str::<Doc>(r#"{"amount": -1}"#).expect_err("negative");
        assert!(
            err.to_string().contains("-1 is not an amount of money"),
            "{err}"
        );
        let err = serde_json::from_str::<Doc>(r#"{"amount": "ten"}"#).expect_err("a string");
        assert!(err.to_string().contains("a number such as 500"), "{err}");
    }

    proptest! {
        #[test]
        fn amounts_up_to_a_billion_units_roundtrip_through_their_units(micros in 0i64..=1_000_000_000_000_000) {
            let money = Money::from_micros(micros);
            let doc = Doc { amount: money };
            let back: Doc = serde_json::from_str(&serde_json::to_string(&doc).expect("json"))
                .expect("parses");
            prop_assert_eq!(back.amount, money);
        }
    }
}
