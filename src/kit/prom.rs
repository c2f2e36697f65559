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

#[cfg(test)]
mod tests {
    use super::*;

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
