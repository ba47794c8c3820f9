//! Schedules: `rate(...)` and cron expressions with an optional time zone. Any text: a
//! schedule or an error, never a panic or a hang. A schedule's next firing is always
//! after the time asked about, and asking again from there moves forward.
#![no_main]

use cirrus_api::schedule::Schedule;
use cirrus_fuzz::Choices;
use libfuzzer_sys::fuzz_target;

/// 2026-11-22T12:00:00Z.
const BASE_MS: u64 = 1_795_348_800_000;

fuzz_target!(|data: &[u8]| {
    let mut choices = Choices::new(data);
    // Any time between 1970 and about 2300.
    let after = choices.u64() % (2 * BASE_MS + 7_000_000_000_000);
    let Ok(text) = std::str::from_utf8(choices.rest()) else {
        return;
    };
    let Ok(schedule) = Schedule::parse(text) else {
        return;
    };
    if let Some(next) = schedule.next_after(after) {
        assert!(next > after, "{text:?}: {next} is not after {after}");
        if let Some(then) = schedule.next_after(next) {
            assert!(then > next, "{text:?}: {then} is not after {next}");
        }
    }
});
