//! The UTC calendar: days and months of millisecond timestamps, without a
//! dependency, by Howard Hinnant's `days_from_civil` and `civil_from_days`
//! (proleptic Gregorian calendar, any `i64` timestamp).

use std::fmt;

/// Milliseconds in a day (UTC has no leap seconds in Unix time).
pub const DAY_MS: i64 = 86_400_000;

/// The start of the UTC day containing `ms`.
pub fn day_start(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// A UTC calendar date, shown as `2026-11-28`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date {
    /// Proleptic Gregorian, astronomical (year 0 is 1 BC).
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
}

impl Date {
    /// The date of the UTC day containing `ms`.
    pub fn containing(ms: i64) -> Date {
        civil_from_days(ms.div_euclid(DAY_MS))
    }

    /// When the day starts, in ms since the epoch (saturating).
    pub fn start_ms(self) -> i64 {
        days_from_civil(self.year, self.month, self.day).saturating_mul(DAY_MS)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A UTC calendar month, shown as `2026-11`: the period of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    /// As in [`Date::year`].
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
}

impl Month {
    /// The month containing `ms`.
    pub fn containing(ms: i64) -> Month {
        let date = Date::containing(ms);
        Month {
            year: date.year,
            month: date.month,
        }
    }

    /// Its first millisecond (saturating).
    pub fn start_ms(self) -> i64 {
        days_from_civil(self.year, self.month, 1).saturating_mul(DAY_MS)
    }

    /// The first millisecond of the next month: the month is `[start_ms, end_ms)`.
    pub fn end_ms(self) -> i64 {
        self.next().start_ms()
    }

    /// The month after this one.
    pub fn next(self) -> Month {
        if self.month >= 12 {
            Month {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// `2026-11`.
    pub fn label(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date `days` days after 1970-01-01.
fn civil_from_days(days: i64) -> Date {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction: day 1 to 31, month 1 to 12.
    Date {
        year,
        month: u32::try_from(month).unwrap_or(1),
        day: u32::try_from(day).unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn date(text: &str) -> i64 {
        let parts: Vec<i64> = text
            .split('-')
            .map(|p| p.parse().expect("a number"))
            .collect();
        days_from_civil(parts[0], parts[1] as u32, parts[2] as u32) * DAY_MS
    }

    #[test]
    fn dates_of_known_timestamps() {
        assert_eq!(Date::containing(0).to_string(), "1970-01-01");
        assert_eq!(Date::containing(-1).to_string(), "1969-12-31");
        // 2026-11-28T12:00:00Z.
        assert_eq!(
            Date::containing(1_795_867_200_000).to_string(),
            "2026-11-28"
        );
        assert_eq!(Month::containing(1_795_867_200_000).label(), "2026-11");
        assert_eq!(date("2026-11-28"), 1_795_824_000_000);
        assert_eq!(date("2000-03-01"), 951_868_800_000);
    }

    #[test]
    fn leap_years_and_month_ends() {
        // 2024 is a leap year, 2100 is not, 2000 is.
        for (last, next) in [
            ("2024-02-29", "2024-03-01"),
            ("2023-02-28", "2023-03-01"),
            ("2100-02-28", "2100-03-01"),
            ("2000-02-29", "2000-03-01"),
            ("2026-04-30", "2026-05-01"),
            ("2026-12-31", "2027-01-01"),
            ("1900-02-28", "1900-03-01"),
        ] {
            let start = date(last);
            assert_eq!(Date::containing(start + DAY_MS - 1).to_string(), last);
            assert_eq!(Date::containing(start + DAY_MS).to_string(), next);
        }
        let feb = Month::containing(date("2024-02-10"));
        assert_eq!(feb.start_ms(), date("2024-02-01"));
        assert_eq!(feb.end_ms(), date("2024-03-01"));
        assert_eq!((feb.end_ms() - feb.start_ms()) / DAY_MS, 29);
        let dec = Month::containing(date("2026-12-31") + DAY_MS - 1);
        assert_eq!(dec.label(), "2026-12");
        assert_eq!(dec.next().label(), "2027-01");
        assert_eq!(dec.end_ms(), date("2027-01-01"));
        assert_eq!(Month::containing(dec.end_ms()), dec.next());
        assert_eq!(Month::containing(dec.end_ms() - 1), dec);
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        for ms in [i64::MIN, i64::MAX] {
            let d = Date::containing(ms);
            assert!((1..=12).contains(&d.month) && (1..=31).contains(&d.day));
            let month = Month::containing(ms);
            assert!(month.start_ms() <= ms);
        }
        assert_eq!(Month::containing(i64::MAX).end_ms(), i64::MAX);
    }

    proptest! {
        #[test]
        fn days_roundtrip(days in -100_000_000i64..100_000_000) {
            let d = civil_from_days(days);
            prop_assert_eq!(days_from_civil(d.year, d.month, d.day), days);
            // The next day is the next date.
            let next = civil_from_days(days + 1);
            let expected = if next.day == 1 {
                d.day >= 28 && (next.month == d.month % 12 + 1)
            } else {
                next.day == d.day + 1 && next.month == d.month && next.year == d.year
            };
            prop_assert!(expected, "{} then {}", d, next);
        }

        #[test]
        fn a_month_contains_its_timestamps(ms in -10_000_000_000_000i64..10_000_000_000_000) {
            let month = Month::containing(ms);
            prop_assert!(month.start_ms() <= ms && ms < month.end_ms());
            prop_assert_eq!(Date::containing(month.start_ms()).day, 1);
            prop_assert_eq!(day_start(ms), Date::containing(ms).start_ms());
            let days = (month.end_ms() - month.start_ms()) / DAY_MS;
            prop_assert!((28..=31).contains(&days));
        }
    }
}
