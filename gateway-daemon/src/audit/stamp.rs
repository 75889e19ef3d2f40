//! Record times: RFC 3339 with microseconds, UTC, as `humantime::format_rfc3339_micros`
//! writes them. Every record carries one, two per call; through `Display` and the
//! formatting machinery that cost some 700 instructions each; written here directly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last instant a four-digit year holds: 9999-12-31T23:59:59.999999Z.
const LAST: Duration = Duration::new(253_402_300_799, 999_999_000);

/// `t` as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`. A clock set before 1970 or past 9999 (humantime
/// panicked on both) is written as the nearest time the form holds: a record is never
/// lost to its time.
pub fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default().min(LAST);
    let secs = since.as_secs();
    let days = secs / 86_400;
    let (year, month, day) = civil(days);
    let of_day = secs % 86_400;
    let mut out = [0u8; 27];
    put(&mut out[0..4], year);
    out[4] = b'-';
    put(&mut out[5..7], month);
    out[7] = b'-';
    put(&mut out[8..10], day);
    out[10] = b'T';
    put(&mut out[11..13], of_day / 3600);
    out[13] = b':';
    put(&mut out[14..16], of_day / 60 % 60);
    out[16] = b':';
    put(&mut out[17..19], of_day % 60);
    out[19] = b'.';
    put(&mut out[20..26], u64::from(since.subsec_micros()));
    out[26] = b'Z';
    String::from_utf8(out.to_vec()).expect("digits and ASCII punctuation")
}

/// Writes `n`'s last `into.len()` decimal digits, zero-padded.
fn put(into: &mut [u8], mut n: u64) {
    for b in into.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn humantime_of(t: SystemTime) -> String {
        humantime::format_rfc3339_micros(t).to_string()
    }

    #[test]
    fn writes_what_humantime_writes() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        let mut times = vec![
            at(0, 0),
            at(0, 999_999_999),
            at(86_399, 1_000),
            at(951_782_400, 0),               // 2000-02-29
            at(951_868_799, 999_999),         // 2000-02-29T23:59:59
            at(4_107_542_400, 0),             // 2100-03-01
            at(4_102_444_799, 500_000),       // 2099-12-31T23:59:59
            at(253_402_300_799, 999_999_000), // 9999-12-31T23:59:59
            SystemTime::now(),
        ];
        // Spread over the whole range, with sub-microsecond parts that must be cut, not
        // rounded.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push(at(x % 253_402_300_800, (x >> 32) as u32 % 1_000_000_000));
        }
        for t in times {
            assert_eq!(timestamp(t), humantime_of(t), "at {t:?}");
        }
    }

    #[test]
    fn a_clock_out_of_range_gives_the_nearest_time() {
        let late = UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_400 * 400);
        assert_eq!(timestamp(late), "9999-12-31T23:59:59.999999Z");
        let early = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(timestamp(early), "1970-01-01T00:00:00.000000Z");
    }
}
