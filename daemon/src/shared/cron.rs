//! Five-field cron schedules (`minute hour day-of-month month day-of-week`, UTC) and the
//! civil-date arithmetic they need. Fields take `*`, numbers, ranges `a-b`, lists `a,b`
//! and steps `*/n`, `a-b/n`; day-of-week is 0–7 with 0 and 7 both Sunday. As in classic
//! cron, when both day fields are restricted a day matching either one matches.

use std::str::FromStr;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

fn field(s: &str, lo: u32, hi: u32, what: &str) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let any = s == "*";
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .map_err(|_| format!("{what}: bad step in {part:?}"))?;
                if st == 0 {
                    return Err(format!("{what}: step 0 in {part:?}"));
                }
                (r, st)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a: u32 = a.parse().map_err(|_| format!("{what}: bad number {a:?}"))?;
            let b: u32 = b.parse().map_err(|_| format!("{what}: bad number {b:?}"))?;
            (a, b)
        } else {
            let a: u32 = range
                .parse()
                .map_err(|_| format!("{what}: bad number {range:?}"))?;
            (a, if part.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{what}: {part:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, any))
}

impl FromStr for Cron {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "cron {s:?} needs 5 fields: minute hour day-of-month month day-of-week"
            ));
        }
        let (minutes, _) = field(f[0], 0, 59, "minute")?;
        let (hours, _) = field(f[1], 0, 23, "hour")?;
        let (days, days_any) = field(f[2], 1, 31, "day of month")?;
        let (months, _) = field(f[3], 1, 12, "month")?;
        let (mut weekdays, weekdays_any) = field(f[4], 0, 7, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Self {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            days_any,
            weekdays_any,
        })
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

impl Cron {
    fn day_matches(&self, dom: u32, dow: u32) -> bool {
        let d = self.days & (1 << dom) != 0;
        let w = self.weekdays & (1 << dow) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => w,
            (false, true) => d,
            (false, false) => d || w,
        }
    }

    /// The first scheduled minute strictly after `t` (unix ms), within about 5 years.
    pub(crate) fn next_after(&self, t: i64) -> Option<i64> {
        let mut t = t.div_euclid(MIN) * MIN + MIN;
        for _ in 0..200_000 {
            let day = t.div_euclid(DAY);
            let (y, mo, d) = civil_from_days(day);
            if self.months & (1 << mo) == 0 {
                let (ny, nm) = if mo == 12 { (y + 1, 1) } else { (y, mo + 1) };
                t = days_from_civil(ny, nm, 1) * DAY;
                continue;
            }
            let dow = (day + 4).rem_euclid(7) as u32;
            if !self.day_matches(d, dow) {
                t = (day + 1) * DAY;
                continue;
            }
            let in_day = t - day * DAY;
            let (h, mi) = ((in_day / HOUR) as u32, ((in_day % HOUR) / MIN) as u32);
            if self.hours & (1 << h) == 0 {
                t = day * DAY + (h as i64 + 1) * HOUR;
                continue;
            }
            if self.minutes & (1 << mi) == 0 {
                t += MIN;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// Parse an RFC 3339 UTC time or offset time (`2026-11-23T18:00:00Z`,
/// `2026-11-23T18:00+01:00`) to unix ms.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once(['T', ' '])?;
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let mo: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    let (time, offset_ms) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
        (t, sign * (oh * HOUR + om * MIN))
    } else {
        return None;
    };
    let mut tp = time.split(':');
    let h: i64 = tp.next()?.parse().ok()?;
    let mi: i64 = tp.next()?.parse().ok()?;
    let sec: f64 = tp.next().map(|x| x.parse().ok()).unwrap_or(Some(0.0))?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * DAY + h * HOUR + mi * MIN + (sec * 1000.0) as i64 - offset_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn civil_dates_round_trip() {
        for z in [-800_000i64, -1, 0, 1, 19_000, 20_415, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(at("1970-01-01T00:00:00Z"), 0);
        assert_eq!(at("2026-11-23T18:00:00Z"), 1_795_456_800_000);
        assert_eq!(at("2026-11-23T19:00:00+01:00"), at("2026-11-23T18:00:00Z"));
    }

    #[test]
    fn next_times_follow_the_fields() {
        let c: Cron = "*/15 * * * *".parse().unwrap();
        assert_eq!(
            c.next_after(at("2026-11-23T18:07:30Z")),
            Some(at("2026-11-23T18:15:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-11-23T18:15:00Z")),
            Some(at("2026-11-23T18:30:00Z"))
        );
        // 09:00 on weekdays: 2026-11-27 is a Friday, so the next after Friday 10:00 is Monday.
        let c: Cron = "0 9 * * 1-5".parse().unwrap();
        assert_eq!(
            c.next_after(at("2026-11-27T10:00:00Z")),
            Some(at("2026-11-30T09:00:00Z"))
        );
        // Feb 29 exists only in leap years.
        let c: Cron = "0 0 29 2 *".parse().unwrap();
        assert_eq!(
            c.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2028-02-29T00:00:00Z"))
        );
        // Sunday as 7.
        let c: Cron = "30 12 * * 7".parse().unwrap();
        assert_eq!(
            c.next_after(at("2026-11-23T00:00:00Z")),
            Some(at("2026-11-29T12:30:00Z"))
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (s, want) in [
            ("* * * *", "5 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("*/0 * * * *", "step"),
            ("a * * * *", "minute"),
        ] {
            let e = s.parse::<Cron>().unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
