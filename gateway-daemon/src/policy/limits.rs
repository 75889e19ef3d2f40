//! Per-principal rate limits: calls per window, and calls in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Limiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    inflight: Arc<Mutex<HashMap<String, u32>>>,
}

/// Held while a call is in flight; releases its slot when dropped.
#[derive(Debug)]
pub struct InFlight {
    principal: String,
    counts: Arc<Mutex<HashMap<String, u32>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Limiter {
    /// Admits one call, or says which limit refuses it.
    pub fn admit(
        &self,
        principal: &str,
        rate_calls: u32,
        window: Duration,
        max_concurrent: u32,
    ) -> Result<InFlight, String> {
        if rate_calls > 0 {
            let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            let e = w
                .entry(principal.to_string())
                .or_insert((Instant::now(), 0));
            if e.0.elapsed() >= window {
                *e = (Instant::now(), 0);
            }
            if e.1 >= rate_calls {
                return Err(format!(
                    "rate limit: {rate_calls} calls per {} s for principal {principal}",
                    window.as_secs()
                ));
            }
            e.1 += 1;
        }
        let mut c = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(principal.to_string()).or_insert(0);
        if max_concurrent > 0 && *n >= max_concurrent {
            return Err(format!(
                "concurrency limit: {max_concurrent} calls in flight for principal {principal}"
            ));
        }
        *n += 1;
        Ok(InFlight {
            principal: principal.to_string(),
            counts: self.inflight.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_concurrency_limits() {
        let l = Limiter::default();
        let w = Duration::from_secs(60);
        let a = l.admit("p", 2, w, 0).unwrap();
        let _b = l.admit("p", 2, w, 0).unwrap();
        assert!(l.admit("p", 2, w, 0).unwrap_err().contains("rate limit"));
        assert!(l.admit("q", 2, w, 0).is_ok(), "limits are per principal");
        drop(a);
        let x = l.admit("c", 0, w, 1).unwrap();
        assert!(l.admit("c", 0, w, 1).unwrap_err().contains("concurrency"));
        drop(x);
        assert!(
            l.admit("c", 0, w, 1).is_ok(),
            "a finished call frees its slot"
        );
        let short = Duration::from_millis(1);
        l.admit("r", 1, short, 0).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            l.admit("r", 1, short, 0).is_ok(),
            "a new window admits again"
        );
    }
}
