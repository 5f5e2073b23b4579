//! Resident memory of this process, from Linux's `/proc/self/status`: the current resident set
//! (`VmRSS`) and its high-water mark (`VmHWM`), which [`reset_peak_rss`] restarts from the
//! current size so that one phase (say, one training step) can be measured on its own.
//! The resident set splits into anonymous memory (`RssAnon`: heap, stacks, the process's own
//! copies of weights) and file-backed pages (`RssFile`: the program's code and memory-mapped
//! files such as [`crate::mapped`] weights, which are clean page-cache pages the kernel can drop
//! and re-read and that every process mapping the file shares). The kernel keeps a high-water
//! mark of the total only; [`MemorySampler`] polls both parts on a thread of its own and keeps
//! their maxima. Elsewhere (or without `/proc`) the functions return `None` / `false`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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

/// Anonymous bytes resident now (`RssAnon`).
pub fn rss_anon_bytes() -> Option<u64> {
    status_kib("RssAnon").map(|k| k * 1024)
}

/// File-backed bytes resident now (`RssFile`: code and mapped files).
pub fn rss_file_bytes() -> Option<u64> {
    status_kib("RssFile").map(|k| k * 1024)
}

/// Peaks of a phase measured by [`MemorySampler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPeaks {
    /// The most bytes resident at once (`VmHWM` since the sampler started: exact).
    pub peak_rss_bytes: u64,
    /// The largest anonymous and file-backed parts seen by the sampler (polled, so a spike
    /// shorter than the interval can be missed; the two maxima need not be simultaneous).
    pub peak_rss_anon_bytes: u64,
    pub peak_rss_file_bytes: u64,
}

/// Polls `RssAnon` and `RssFile` every `interval` on a thread of its own and keeps the
/// largest values, and resets the kernel's high-water mark at the start, so that one phase of
/// a run (say, the training steps) is measured on its own.
#[derive(Debug)]
pub struct MemorySampler {
    stop: Arc<AtomicBool>,
    anon: Arc<AtomicU64>,
    file: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemorySampler {
    /// Starts sampling; `None` where `/proc/self/status` or the mark's reset is unavailable.
    pub fn start(interval: Duration) -> Option<Self> {
        if rss_anon_bytes().is_none() || !reset_peak_rss() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let anon = Arc::new(AtomicU64::new(0));
        let file = Arc::new(AtomicU64::new(0));
        let sample = {
            let (anon, file) = (anon.clone(), file.clone());
            move || {
                anon.fetch_max(rss_anon_bytes().unwrap_or(0), Ordering::Relaxed);
                file.fetch_max(rss_file_bytes().unwrap_or(0), Ordering::Relaxed);
            }
        };
        sample();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("rss-sampler".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        sample();
                        std::thread::sleep(interval);
                    }
                })
                .ok()?
        };
        Some(Self {
            stop,
            anon,
            file,
            thread: Some(thread),
        })
    }

    /// Stops sampling (after one last sample) and returns the peaks.
    pub fn finish(mut self) -> MemoryPeaks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.anon
            .fetch_max(rss_anon_bytes().unwrap_or(0), Ordering::Relaxed);
        self.file
            .fetch_max(rss_file_bytes().unwrap_or(0), Ordering::Relaxed);
        MemoryPeaks {
            peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
            peak_rss_anon_bytes: self.anon.load(Ordering::Relaxed),
            peak_rss_file_bytes: self.file.load(Ordering::Relaxed),
        }
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Restarts the high-water mark from the current resident size (writes `5` to
/// `/proc/self/clear_refs`, Linux 4.0+); false if that is not possible here.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The high-water mark is the process's: tests that reset it take turns.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn the_peak_follows_a_large_allocation_and_resets() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
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

    #[test]
    fn the_sampler_sees_anonymous_memory_and_the_parts_add_up() {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = MemorySampler::start(Duration::from_millis(1)) else {
            return; // not Linux with /proc
        };
        let before = rss_anon_bytes().unwrap();
        let v = vec![1u8; 48 << 20];
        assert!(v.iter().step_by(4096).all(|&b| b == 1));
        std::thread::sleep(Duration::from_millis(20));
        let p = s.finish();
        drop(v);
        assert!(
            p.peak_rss_anon_bytes >= before + (44 << 20),
            "{before} {p:?}"
        );
        assert!(p.peak_rss_file_bytes > 0, "{p:?}");
        // The exact total peak covers the anonymous peak (sampled at one moment).
        assert!(p.peak_rss_bytes >= p.peak_rss_anon_bytes, "{p:?}");
    }
}
