//! The boot timer: the guest's init writes a byte to a fixed MMIO address when it is up, and
//! Kite logs how long the boot took from process start, in wall time and in CPU time.

use std::time::{Duration, Instant};

use crate::bus::BusDevice;

pub struct BootTimer {
    process_start: Instant,
    reported: Option<(Duration, Duration)>,
}

impl BootTimer {
    pub fn new(process_start: Instant) -> Self {
        Self {
            process_start,
            reported: None,
        }
    }

    /// (wall, CPU) time of the first write, if there was one.
    pub fn boot_time(&self) -> Option<(Duration, Duration)> {
        self.reported
    }
}

/// CPU time this process has used, all threads.
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid local `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        if self.reported.is_none() {
            let wall = self.process_start.elapsed();
            let cpu = process_cpu_time();
            log::info!(
                "guest boot time: {} ms ({} ms CPU)",
                wall.as_millis(),
                cpu.as_millis()
            );
            self.reported = Some((wall, cpu));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_write_records_the_boot_time_once() {
        let start = Instant::now() - Duration::from_millis(50);
        let mut t = BootTimer::new(start);
        assert_eq!(t.boot_time(), None);
        t.write(0, &[123]);
        let (wall, _cpu) = t.boot_time().unwrap();
        assert!(wall >= Duration::from_millis(50));
        t.write(0, &[1]);
        assert_eq!(t.boot_time().unwrap().0, wall);
    }
}
