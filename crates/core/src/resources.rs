//! The resource vector `{cpu, memory, gpu}` and its quantities.
//!
//! cpu is counted in millicores, memory in MiB and gpu as a count. Quantities are
//! written like Kubernetes ones: `2`, `1.5`, `500m` for cpu; `512Mi`, `4Gi`, `1.5Ti`
//! for memory. All arithmetic is checked: an operation that would overflow or go
//! negative returns `None` instead of a wrong number.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A vector of resources in base units; on the wire `{cpu_millis, memory_mib, gpu}`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_mib: u64,
    pub gpu: u64,
}

/// One dimension of [`Resources`], used to name what is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    Cpu,
    Memory,
    Gpu,
}

impl Dimension {
    pub const ALL: [Dimension; 3] = [Dimension::Cpu, Dimension::Memory, Dimension::Gpu];

    pub fn name(self) -> &'static str {
        match self {
            Dimension::Cpu => "cpu",
            Dimension::Memory => "memory",
            Dimension::Gpu => "gpu",
        }
    }

    /// Formats an amount of this dimension the way a user writes it
    /// (`unlimited` above any quantity, see [`format_count`]).
    pub fn format(self, amount: u64) -> String {
        match self {
            Dimension::Cpu => format_cpu(amount),
            Dimension::Memory => format_memory(amount),
            Dimension::Gpu => format_count(amount),
        }
    }
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_mib: 0,
        gpu: 0,
    };

    pub const fn new(cpu_millis: u64, memory_mib: u64, gpu: u64) -> Self {
        Resources {
            cpu_millis,
            memory_mib,
            gpu,
        }
    }

    pub fn get(&self, dim: Dimension) -> u64 {
        match dim {
            Dimension::Cpu => self.cpu_millis,
            Dimension::Memory => self.memory_mib,
            Dimension::Gpu => self.gpu,
        }
    }

    pub fn checked_add(&self, other: &Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_add(other.cpu_millis)?,
            memory_mib: self.memory_mib.checked_add(other.memory_mib)?,
            gpu: self.gpu.checked_add(other.gpu)?,
        })
    }

    /// `self - other`, or `None` when any dimension would go negative.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_sub(other.cpu_millis)?,
            memory_mib: self.memory_mib.checked_sub(other.memory_mib)?,
            gpu: self.gpu.checked_sub(other.gpu)?,
        })
    }

    /// Sum that clamps at `u64::MAX`: for totals that are only compared, never stored.
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_mib: self.memory_mib.saturating_add(other.memory_mib),
            gpu: self.gpu.saturating_add(other.gpu),
        }
    }

    /// Difference that clamps at zero: what is left of `self` after `other`.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            gpu: self.gpu.saturating_sub(other.gpu),
        }
    }

    /// Component-wise maximum.
    pub fn max(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_mib: self.memory_mib.max(other.memory_mib),
            gpu: self.gpu.max(other.gpu),
        }
    }

    /// Component-wise minimum.
    pub fn min(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.min(other.cpu_millis),
            memory_mib: self.memory_mib.min(other.memory_mib),
            gpu: self.gpu.min(other.gpu),
        }
    }

    /// True when every dimension of `self` is at most that of `limit`.
    pub fn fits_in(&self, limit: &Resources) -> bool {
        self.cpu_millis <= limit.cpu_millis
            && self.memory_mib <= limit.memory_mib
            && self.gpu <= limit.gpu
    }

    /// The dimensions in which `self` exceeds `limit`.
    pub fn exceeding(&self, limit: &Resources) -> Vec<Dimension> {
        Dimension::ALL
            .into_iter()
            .filter(|d| self.get(*d) > limit.get(*d))
            .collect()
    }

    pub fn is_zero(&self) -> bool {
        *self == Resources::ZERO
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}, memory {}",
            format_cpu(self.cpu_millis),
            format_memory(self.memory_mib)
        )?;
        if self.gpu > 0 {
            write!(f, ", gpu {}", format_count(self.gpu))?;
        }
        Ok(())
    }
}

/// Resources held over time, exactly, in base units times milliseconds:
/// millicore-ms, MiB-ms and gpu-ms. Signed, so that what is left of a capacity
/// once allocations are taken out can show an excess as a negative amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ResourceTime {
    /// Millicore-milliseconds.
    pub cpu_milli_ms: i128,
    /// MiB-milliseconds.
    pub memory_mib_ms: i128,
    /// Gpu-milliseconds.
    pub gpu_ms: i128,
}

impl ResourceTime {
    /// Nothing held.
    pub const ZERO: ResourceTime = ResourceTime {
        cpu_milli_ms: 0,
        memory_mib_ms: 0,
        gpu_ms: 0,
    };

    /// `held` for `duration_ms` (nothing for a negative duration).
    pub fn held(held: &Resources, duration_ms: i64) -> ResourceTime {
        let ms = i128::from(duration_ms.max(0));
        ResourceTime {
            cpu_milli_ms: i128::from(held.cpu_millis).saturating_mul(ms),
            memory_mib_ms: i128::from(held.memory_mib).saturating_mul(ms),
            gpu_ms: i128::from(held.gpu).saturating_mul(ms),
        }
    }

    /// Sum, clamped at the bounds of `i128`.
    pub fn saturating_add(&self, other: &ResourceTime) -> ResourceTime {
        ResourceTime {
            cpu_milli_ms: self.cpu_milli_ms.saturating_add(other.cpu_milli_ms),
            memory_mib_ms: self.memory_mib_ms.saturating_add(other.memory_mib_ms),
            gpu_ms: self.gpu_ms.saturating_add(other.gpu_ms),
        }
    }

    /// Difference, clamped at the bounds of `i128` (it may be negative).
    pub fn saturating_sub(&self, other: &ResourceTime) -> ResourceTime {
        ResourceTime {
            cpu_milli_ms: self.cpu_milli_ms.saturating_sub(other.cpu_milli_ms),
            memory_mib_ms: self.memory_mib_ms.saturating_sub(other.memory_mib_ms),
            gpu_ms: self.gpu_ms.saturating_sub(other.gpu_ms),
        }
    }

    /// Cpu in core-seconds.
    pub fn cpu_core_seconds(&self) -> f64 {
        self.cpu_milli_ms as f64 / 1e6
    }

    /// Memory in GiB-seconds.
    pub fn memory_gib_seconds(&self) -> f64 {
        self.memory_mib_ms as f64 / (1024.0 * 1000.0)
    }

    /// Gpu-seconds.
    pub fn gpu_seconds(&self) -> f64 {
        self.gpu_ms as f64 / 1000.0
    }
}

/// A quantity that could not be parsed; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a {kind} quantity (examples: {examples})")]
pub struct QuantityError {
    pub input: String,
    pub kind: &'static str,
    pub examples: &'static str,
}

/// The largest amount of any dimension: what a signed 64-bit database column holds.
pub const MAX_QUANTITY: u64 = i64::MAX as u64;

const CPU_EXAMPLES: &str = "500m, 2, 1.5";
const MEMORY_EXAMPLES: &str = "512Mi, 4Gi, 1.5Ti";

/// Parses a decimal number of wholes into base units, `unit` base units to the
/// whole; fails on anything that is not an exact, representable count.
fn parse_scaled(number: &str, unit: u64) -> Option<u64> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let whole_value: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut total = whole_value.checked_mul(unit)?;
    if !frac.is_empty() {
        // fraction * unit must be a whole number of base units.
        let digits = u32::try_from(frac.len()).ok()?;
        let denominator = 10u128.checked_pow(digits)?;
        let numerator: u128 = frac.parse().ok()?;
        let scaled = numerator.checked_mul(u128::from(unit))?;
        if scaled % denominator != 0 {
            return None;
        }
        total = total.checked_add(u64::try_from(scaled / denominator).ok()?)?;
    }
    (total <= MAX_QUANTITY).then_some(total)
}

/// Parses a cpu quantity into millicores: `2`, `1.5`, `500m`.
pub fn parse_cpu(input: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError {
        input: input.to_string(),
        kind: "cpu",
        examples: CPU_EXAMPLES,
    };
    let text = input.trim();
    let parsed = match text.strip_suffix('m') {
        Some(millis) if !millis.contains('.') => parse_scaled(millis, 1),
        Some(_) => None,
        None => parse_scaled(text, 1000),
    };
    parsed.ok_or_else(err)
}

/// Parses a memory quantity into MiB: `512Mi`, `4Gi`, `1.5Ti`. A unit is required,
/// because a bare number is ambiguous between bytes and MiB.
pub fn parse_memory(input: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError {
        input: input.to_string(),
        kind: "memory",
        examples: MEMORY_EXAMPLES,
    };
    let text = input.trim();
    let (number, unit) = if let Some(n) = text.strip_suffix("Mi") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix("Gi") {
        (n, 1024)
    } else if let Some(n) = text.strip_suffix("Ti") {
        (n, 1024 * 1024)
    } else {
        return Err(err());
    };
    parse_scaled(number, unit).ok_or_else(err)
}

/// What an amount above any quantity ([`MAX_QUANTITY`]) reads as: such an
/// amount is a limit left out (a quota's `u64::MAX`), or a sum that reached it.
pub const UNLIMITED: &str = "unlimited";

/// Formats a count (gpus, runs): the number, or `unlimited`.
pub fn format_count(n: u64) -> String {
    if n > MAX_QUANTITY {
        UNLIMITED.to_string()
    } else {
        n.to_string()
    }
}

/// Formats millicores: whole cores as `2`, the rest as `1500m`; `unlimited`
/// above any quantity.
pub fn format_cpu(millis: u64) -> String {
    if millis > MAX_QUANTITY {
        UNLIMITED.to_string()
    } else if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Formats MiB: `4Gi` when it is a whole number of GiB, otherwise `512Mi`;
/// `unlimited` above any quantity.
pub fn format_memory(mib: u64) -> String {
    if mib > MAX_QUANTITY {
        UNLIMITED.to_string()
    } else if mib != 0 && mib.is_multiple_of(1024 * 1024) {
        format!("{}Ti", mib / (1024 * 1024))
    } else if mib != 0 && mib.is_multiple_of(1024) {
        format!("{}Gi", mib / 1024)
    } else {
        format!("{mib}Mi")
    }
}

/// Resources as users write them in YAML or JSON: `{cpu: 2, memory: 4Gi, gpu: 1}`.
/// A field left out is `None`; what that means (zero, a default, unlimited) is up
/// to where the spec is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    #[serde(
        default,
        with = "cpu_quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<u64>,
    #[serde(
        default,
        with = "memory_quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u64>,
}

impl ResourceSpec {
    /// Whether no field is set.
    pub fn is_unset(&self) -> bool {
        *self == ResourceSpec::default()
    }

    /// The resources, taking each missing field from `defaults`.
    pub fn or(&self, defaults: Resources) -> Resources {
        Resources::new(
            self.cpu.unwrap_or(defaults.cpu_millis),
            self.memory.unwrap_or(defaults.memory_mib),
            self.gpu.unwrap_or(defaults.gpu),
        )
    }
}

impl From<Resources> for ResourceSpec {
    fn from(r: Resources) -> Self {
        ResourceSpec {
            cpu: Some(r.cpu_millis),
            memory: Some(r.memory_mib),
            gpu: Some(r.gpu),
        }
    }
}

/// A visitor that accepts a quantity written as a string or a number.
struct QuantityVisitor {
    parse: fn(&str) -> Result<u64, QuantityError>,
    expecting: &'static str,
}

impl Visitor<'_> for QuantityVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        (self.parse)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        self.visit_str(&v.to_string())
    }
}

pub(crate) mod cpu_quantity {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&format_cpu(*v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(QuantityVisitor {
            parse: parse_cpu,
            expecting: "a cpu quantity such as 500m, 2 or 1.5",
        })
        .map(Some)
    }
}

pub(crate) mod memory_quantity {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&format_memory(*v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(QuantityVisitor {
            parse: parse_memory,
            expecting: "a memory quantity such as 512Mi or 4Gi",
        })
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_unlimited_amount_reads_unlimited_never_its_integer() {
        let unlimited = Resources::new(u64::MAX, u64::MAX, u64::MAX);
        assert_eq!(
            unlimited.to_string(),
            "cpu unlimited, memory unlimited, gpu unlimited"
        );
        for d in Dimension::ALL {
            assert_eq!(d.format(u64::MAX), "unlimited");
            assert_ne!(d.format(MAX_QUANTITY), "unlimited");
        }
        assert_eq!(format_count(3), "3");
        assert_eq!(
            Resources::new(1500, 4096, 2).to_string(),
            "cpu 1500m, memory 4Gi, gpu 2"
        );
    }

    #[test]
    fn parses_cpu_forms() {
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("1.5"), Ok(1500));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        assert_eq!(parse_cpu(".5"), Ok(500));
        assert!(parse_cpu("2x").is_err());
        assert!(parse_cpu("-1").is_err());
        assert!(parse_cpu("0.0001").is_err());
        assert!(parse_cpu("1.5m").is_err());
        assert!(parse_cpu("").is_err());
        assert!(parse_cpu("99999999999999999999").is_err());
        assert!(parse_cpu(&format!("{}m", MAX_QUANTITY)).is_ok());
        assert!(parse_cpu(&format!("{}m", MAX_QUANTITY + 1)).is_err());
    }

    #[test]
    fn parses_memory_forms() {
        assert_eq!(parse_memory("512Mi"), Ok(512));
        assert_eq!(parse_memory("4Gi"), Ok(4096));
        assert_eq!(parse_memory("1.5Gi"), Ok(1536));
        assert_eq!(parse_memory("1Ti"), Ok(1024 * 1024));
        assert!(parse_memory("512").is_err());
        assert!(parse_memory("4GB").is_err());
        assert!(parse_memory("0.1Mi").is_err());
    }

    #[test]
    fn error_message_names_examples() {
        let err = parse_cpu("2x").expect_err("2x is not a quantity");
        assert_eq!(
            err.to_string(),
            "\"2x\" is not a cpu quantity (examples: 500m, 2, 1.5)"
        );
    }

    #[test]
    fn spec_accepts_numbers_and_strings() {
        let spec: ResourceSpec =
            serde_json::from_str(r#"{"cpu": 1.5, "memory": "4Gi", "gpu": 1}"#).expect("valid");
        assert_eq!(spec.or(Resources::ZERO), Resources::new(1500, 4096, 1));
        let spec: ResourceSpec = serde_json::from_str(r#"{"cpu": 2}"#).expect("valid");
        assert_eq!(spec.or(Resources::new(1, 7, 0)), Resources::new(2000, 7, 0));
        assert!(serde_json::from_str::<ResourceSpec>(r#"{"cpu": -2}"#).is_err());
        assert!(serde_json::from_str::<ResourceSpec>(r#"{"disk": 2}"#).is_err());
    }

    #[test]
    fn resource_time_counts_exactly_in_base_units() {
        let hour = ResourceTime::held(&Resources::new(1500, 2048, 1), 3_600_000);
        assert_eq!(hour.cpu_milli_ms, 5_400_000_000);
        assert_eq!(hour.cpu_core_seconds(), 5400.0);
        assert_eq!(hour.memory_gib_seconds(), 7200.0);
        assert_eq!(hour.gpu_seconds(), 3600.0);
        assert_eq!(
            ResourceTime::held(&Resources::new(1, 1, 1), -5),
            ResourceTime::ZERO
        );
        let twice = hour.saturating_add(&hour);
        assert_eq!(twice.saturating_sub(&hour), hour);
        assert_eq!(ResourceTime::ZERO.saturating_sub(&hour).gpu_ms, -3_600_000);
        let most = ResourceTime::held(&Resources::new(u64::MAX, u64::MAX, u64::MAX), i64::MAX);
        assert_eq!(most.saturating_add(&most).gpu_ms, i128::MAX);
    }

    fn any_resources() -> impl Strategy<Value = Resources> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, m, g)| Resources::new(c, m, g))
    }

    proptest! {
        #[test]
        fn cpu_roundtrips(millis in 0..=MAX_QUANTITY) {
            prop_assert_eq!(parse_cpu(&format_cpu(millis)), Ok(millis));
        }

        #[test]
        fn memory_roundtrips(mib in 0..=MAX_QUANTITY) {
            prop_assert_eq!(parse_memory(&format_memory(mib)), Ok(mib));
        }

        #[test]
        fn spec_roundtrips(c in 0..=MAX_QUANTITY, m in 0..=MAX_QUANTITY, g in any::<u64>()) {
            let r = Resources::new(c, m, g);
            let json = serde_json::to_string(&ResourceSpec::from(r)).expect("serializes");
            let back: ResourceSpec = serde_json::from_str(&json).expect("parses");
            prop_assert_eq!(back.or(Resources::ZERO), r);
        }

        #[test]
        fn arithmetic_never_overflows_or_goes_negative(a in any_resources(), b in any_resources()) {
            match a.checked_add(&b) {
                Some(sum) => {
                    prop_assert!(a.fits_in(&sum) && b.fits_in(&sum));
                    prop_assert_eq!(sum.checked_sub(&b), Some(a));
                }
                None => prop_assert!(
                    a.cpu_millis.checked_add(b.cpu_millis).is_none()
                        || a.memory_mib.checked_add(b.memory_mib).is_none()
                        || a.gpu.checked_add(b.gpu).is_none()
                ),
            }
            match a.checked_sub(&b) {
                Some(diff) => prop_assert!(b.fits_in(&a) && diff.fits_in(&a)),
                None => prop_assert!(!b.fits_in(&a)),
            }
        }
    }
}
