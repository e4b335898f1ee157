//! The wall clock the server reads.
//!
//! The system clock, shifted by `MESHKV_CLOCK_OFFSET_MS` (signed milliseconds) when that
//! variable is set: a stand-in for a machine whose clock is wrong, so that clock-skew
//! behaviour can be tested with real processes without `faketime`. It is read once per
//! process; an unparsable value is reported once and ignored.

use std::sync::OnceLock;

/// The environment variable that shifts this process's wall clock.
pub const OFFSET_ENV: &str = "MESHKV_CLOCK_OFFSET_MS";

fn offset_micros() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| match std::env::var(OFFSET_ENV) {
        Err(_) => 0,
        Ok(v) => match v.trim().parse::<i64>() {
            Ok(ms) => {
                tracing::warn!(
                    "{OFFSET_ENV}={ms}: this process's wall clock is shifted by {ms} ms"
                );
                ms.saturating_mul(1000)
            }
            Err(_) => {
                tracing::warn!("{OFFSET_ENV}={v:?} is not a number of milliseconds; ignored");
                0
            }
        },
    })
}

/// Microseconds since the Unix epoch, shifted by [`OFFSET_ENV`].
pub fn wall_micros() -> u64 {
    let w = meshkv_core::hlc::wall_micros() as i64;
    w.saturating_add(offset_micros()).max(0) as u64
}
