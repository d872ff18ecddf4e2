//! The statistics of an A/B: mean and sample standard deviation over seeds, and the paired
//! difference to the control with its two-sided 95% Student-t interval.

use serde::{Deserialize, Serialize};

/// Two-sided 95% quantiles of Student's t, t(0.975, df) for df = 1..30.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
    2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// t(0.975, df): the table to df 30, beyond it the Cornish-Fisher expansion about the normal's
/// 1.95996 (within 1e-4 of the exact quantile there).
pub fn t975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        d if d <= T975.len() => T975[d - 1],
        d => {
            let (z, n) = (1.959_964f64, d as f64);
            z + (z.powi(3) + z) / (4.0 * n) + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        }
    }
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The sample standard deviation (n - 1); None for fewer than two values.
pub fn std(v: &[f64]) -> Option<f64> {
    (v.len() > 1).then(|| {
        let m = mean(v);
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    })
}

/// Paired differences (arm minus control, one per seed), their mean and 95% t-interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    pub per_seed: Vec<f64>,
    pub mean: f64,
    /// None with one seed (no spread to estimate).
    pub ci95: Option<[f64; 2]>,
}

impl Paired {
    pub fn of(arm: &[f64], control: &[f64]) -> Paired {
        let d: Vec<f64> = arm.iter().zip(control).map(|(a, c)| a - c).collect();
        let m = mean(&d);
        let ci95 = std(&d).map(|sd| {
            let h = t975(d.len() - 1) * sd / (d.len() as f64).sqrt();
            [m - h, m + h]
        });
        Paired { per_seed: d, mean: m, ci95 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_students_t() {
        let p = Paired::of(&[0.51, 0.53, 0.49], &[0.5, 0.5, 0.5]);
        let d = [0.01f64, 0.03, -0.01];
        let m = d.iter().sum::<f64>() / 3.0;
        let sd = (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 2.0).sqrt();
        let h = 4.303 * sd / 3f64.sqrt();
        let ci = p.ci95.unwrap();
        assert!((p.mean - m).abs() < 1e-12 && (ci[0] - (m - h)).abs() < 1e-12 && (ci[1] - (m + h)).abs() < 1e-12);
        assert!(Paired::of(&[0.5], &[0.4]).ci95.is_none());
        // The expansion meets the table: t(0.975, 30) = 2.042, t(0.975, 120) = 1.980.
        assert!((t975(31) - 2.040).abs() < 1e-3 && (t975(120) - 1.980).abs() < 1e-3, "{} {}", t975(31), t975(120));
    }
}
