//! Resident memory of this process, from Linux's `/proc/self/status`: the current resident set
//! (`VmRSS`) and its high-water mark (`VmHWM`), which [`reset_peak_rss`] restarts from the
//! current size so that one phase (say, one training step) can be measured on its own.
//! Elsewhere (or without `/proc`) the functions return `None` / `false`.

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Bytes resident now (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS").map(|k| k * 1024)
}

/// The most bytes resident at once since the process started or since the last
/// [`reset_peak_rss`] (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM").map(|k| k * 1024)
}

/// Restarts the high-water mark from the current resident size (writes `5` to
/// `/proc/self/clear_refs`, Linux 4.0+); false if that is not possible here.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_a_large_allocation_and_resets() {
        let (Some(_), true) = (rss_bytes(), reset_peak_rss()) else {
            return; // not Linux with /proc: nothing to measure
        };
        let before = peak_rss_bytes().unwrap();
        // 64 MiB, touched so it is resident.
        let v = vec![1u8; 64 << 20];
        let during = peak_rss_bytes().unwrap();
        assert!(v.iter().step_by(4096).all(|&b| b == 1));
        assert!(during >= before + (60 << 20), "{before} -> {during}");
        drop(v);
        assert!(reset_peak_rss());
        assert!(peak_rss_bytes().unwrap() < during);
    }
}
