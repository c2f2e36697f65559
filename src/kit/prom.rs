//! Reading Prometheus text (what `/metrics` answers).

/// The value of the sample `name` in Prometheus text: the line `name value`, labels included in
/// `name` (`syncast_rejected_total{reason="max-clients"}`). `None` if there is no such line or
/// its value is not a number. A name does not match a longer one (`syncast_chat_members` is not
/// `syncast_chat_members_total`).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A cumulative histogram's buckets: (upper bound `le`, count), in the order given.
pub type Buckets = Vec<(f64, f64)>;

/// The buckets of the histogram `name` in Prometheus text (its `name_bucket{le="…"}` lines;
/// `+Inf` as infinity). Empty if there are none.
pub fn buckets(text: &str, name: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let (le, rest) = l.strip_prefix(prefix.as_str())?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound holding the `q` quantile of what was counted between two reads
/// (`before`, `after`) of one cumulative histogram; NaN if nothing was.
pub fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let total = match (before.last(), after.last()) {
        (Some(b), Some(a)) => a.1 - b.1,
        _ => return f64::NAN,
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    before
        .iter()
        .zip(after)
        .find(|(b, a)| a.1 - b.1 >= q * total)
        .map_or(f64::NAN, |(_, a)| a.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_quantile_is_the_first_bound_holding_that_share_of_what_was_added() {
        let text = "syncast_x_seconds_bucket{le=\"0.01\"} 55\n\
                    syncast_x_seconds_bucket{le=\"0.025\"} 100\n\
                    syncast_x_seconds_bucket{le=\"0.05\"} 105\n\
                    syncast_x_seconds_bucket{le=\"+Inf\"} 105\n\
                    syncast_x_seconds_sum 1.5\nsyncast_y_seconds_bucket{le=\"0.01\"} 9\n";
        let after = buckets(text, "syncast_x_seconds");
        assert_eq!(
            after,
            vec![
                (0.01, 55.0),
                (0.025, 100.0),
                (0.05, 105.0),
                (f64::INFINITY, 105.0)
            ]
        );
        let before = [(0.01, 5.0), (0.025, 5.0), (0.05, 5.0), (f64::INFINITY, 5.0)];
        // 100 added: 50 within 10 ms, 45 more within 25 ms, the last 5 within 50 ms.
        assert_eq!(bucket_quantile(&before, &after, 0.5), 0.01);
        assert_eq!(bucket_quantile(&before, &after, 0.9), 0.025);
        assert_eq!(bucket_quantile(&before, &after, 0.99), 0.05);
        assert!(
            bucket_quantile(&before, &before, 0.99).is_nan(),
            "nothing added"
        );
        assert!(buckets(text, "syncast_z_seconds").is_empty());
    }

    #[test]
    fn a_sample_is_found_by_its_whole_name_labels_included() {
        let text = "# HELP syncast_chat_members x\n# TYPE syncast_chat_members gauge\n\
                    syncast_chat_members 3\nsyncast_chat_members_total 9\n\
                    syncast_rejected_total{reason=\"max-clients\"} 55\n\
                    syncast_refresh_window_seconds{quantile=\"0.99\"} 0.000250\n";
        assert_eq!(sample(text, "syncast_chat_members"), Some(3.0));
        assert_eq!(sample(text, "syncast_chat_members_total"), Some(9.0));
        assert_eq!(
            sample(text, "syncast_rejected_total{reason=\"max-clients\"}"),
            Some(55.0)
        );
        assert_eq!(
            sample(text, "syncast_refresh_window_seconds{quantile=\"0.99\"}"),
            Some(0.00025)
        );
        assert_eq!(
            sample(text, "syncast_rejected_total"),
            None,
            "labels are part of it"
        );
        assert_eq!(sample(text, "syncast_nope"), None);
    }
}
