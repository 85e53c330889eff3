//! Statistics over the phases' figures, each of which may be missing.

/// Mean of the values that are present; `None` when none is.
pub fn mean(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.into_iter().flatten().collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

/// Median (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Sum of the values that are present; `None` when none is.
pub fn sum(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    values.into_iter().flatten().reduce(|a, b| a + b)
}

/// Largest of the values that are present; `None` when none is.
pub fn max(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    values.into_iter().flatten().reduce(f64::max)
}

/// `numerator / denominator`; `None` when either is missing or the denominator is zero.
pub fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d != 0.0 => Some(n / d),
        _ => None,
    }
}

/// Mean of the pairwise ratios `values[i] / over[i]` that exist (see [`ratio`]).
pub fn mean_ratio(values: &[Option<f64>], over: &[Option<f64>]) -> Option<f64> {
    mean(values.iter().zip(over).map(|(&v, &d)| ratio(v, d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_values_are_skipped() {
        assert_eq!(mean([Some(1.0), None, Some(3.0)]), Some(2.0));
        assert_eq!(mean([None]), None);
        assert_eq!(sum([Some(1.0), None, Some(3.0)]), Some(4.0));
        assert_eq!(sum([None]), None);
        assert_eq!(max([Some(1.0), None, Some(3.0)]), Some(3.0));
        assert_eq!(max(std::iter::empty()), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    #[test]
    fn mean_ratios_skip_missing_pairs() {
        let values = [Some(2.0), None, Some(6.0), Some(1.0)];
        let over = [Some(1.0), Some(1.0), Some(2.0), Some(0.0)];
        assert_eq!(mean_ratio(&values, &over), Some(2.5));
        assert_eq!(mean_ratio(&[None], &[Some(1.0)]), None);
    }
}
