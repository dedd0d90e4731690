//! Median, min and max of a handful of samples, and the guest/host ratio with its spread.

/// Median, smallest and largest of a set of samples (in the JSON as `{"median", "min", "max"}`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples (NaNs are left out first).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// The guest/host ratio of the medians, with the smallest and largest ratio of one guest run to
/// the host run just before it (the runs alternate host, guest, host, guest, ...).
///
/// The ratio of the medians always lies between those two, so the whiskers of a chart drawn from
/// them enclose its bar. `None` unless both sides have samples, as many of each, and no host
/// figure is zero.
pub fn ratio(host: &[f64], guest: &[f64]) -> Option<Summary> {
    if host.len() != guest.len() || host.contains(&0.0) {
        return None;
    }
    let (h, g) = (Summary::of(host)?, Summary::of(guest)?);
    let pairs: Vec<f64> = guest.iter().zip(host).map(|(g, h)| g / h).collect();
    let spread = Summary::of(&pairs)?;
    Some(Summary {
        median: g.median / h.median,
        min: spread.min,
        max: spread.max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                median: 3.0,
                min: 1.0,
                max: 5.0
            }
        );
        let s = Summary::of(&[4.0, 1.0, 3.0, 10.0]).unwrap();
        assert_eq!(s.median, 3.5);
        assert_eq!((s.min, s.max), (1.0, 10.0));
        assert_eq!(Summary::of(&[7.0]).unwrap().median, 7.0);
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::NAN, 2.0]).unwrap().median, 2.0);
    }

    #[test]
    fn ratio_of_medians_with_pairwise_spread() {
        let host = [100.0, 110.0, 90.0];
        let guest = [120.0, 121.0, 117.0];
        let r = ratio(&host, &guest).unwrap();
        assert!((r.median - 120.0 / 100.0).abs() < 1e-12);
        assert!((r.min - 1.1).abs() < 1e-12);
        assert!((r.max - 1.3).abs() < 1e-12);
        assert!(r.min <= r.median && r.median <= r.max);
    }

    #[test]
    fn ratio_needs_matching_nonzero_samples() {
        assert_eq!(ratio(&[], &[]), None);
        assert_eq!(ratio(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(ratio(&[0.0], &[1.0]), None);
    }
}
