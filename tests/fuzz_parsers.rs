//! Property-based fuzzing of every parser a user reaches in the `skiff`
//! crate: label and field selectors, quantities, names, cron schedules,
//! durations, CIDRs and manifests (YAML/JSON to protobuf through descriptors).
//!
//! Invariants: no input panics; a refusal says what is wrong; where a
//! printer exists, parse → print → parse gives the same value. CI runs the
//! default number of cases (seconds); `scripts/fuzz.sh` runs them for as
//! long as asked, and proptest keeps any failing input under
//! `tests/fuzz_parsers.proptest-regressions` as a regression case.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use skiff::names;
use skiff::net::Ipv4Cidr;
use skiff::quantity::Quantity;
use skiff::schedule::Schedule;
use skiff::selector::{FieldSelector, LabelSelector};

/// Text from a parser's own alphabet (likely to get past its first checks),
/// or anything at all.
fn text(alphabet: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::string::string_regex(alphabet).expect("a valid regex"),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Relative to the package (where cargo runs its tests); committed.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz_parsers.proptest-regressions",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn label_selectors_never_panic_and_round_trip(
        s in text(r"[a-z0-9./_ =!,()-]{0,48}|[a-z]{1,5}( in | notin )\([a-z0-9, ]{0,20}\)"),
    ) {
        match LabelSelector::parse(&s) {
            Ok(sel) => {
                let printed = sel.to_string();
                let again = LabelSelector::parse(&printed);
                prop_assert_eq!(again.as_ref(), Ok(&sel), "printed as {:?}", printed);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn field_selectors_never_panic_and_round_trip(
        s in text(r"[a-zA-Z0-9._ =!,-]{0,48}"),
    ) {
        match FieldSelector::parse(&s) {
            Ok(sel) => {
                let printed = sel.to_string();
                let again = FieldSelector::parse(&printed);
                prop_assert_eq!(again.as_ref(), Ok(&sel), "printed as {:?}", printed);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn quantities_never_panic_and_round_trip(
        s in text(r"[+-]?[0-9]{0,30}(\.[0-9]{0,12})?([eE][+-]?[0-9]{1,4}|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?"),
    ) {
        match Quantity::parse(&s) {
            Ok(q) => {
                let printed = q.to_string();
                prop_assert_eq!(Quantity::parse(&printed), Ok(q), "printed as {:?}", printed);
            }
            Err(e) => prop_assert!(e.to_string().contains("invalid quantity")),
        }
    }

    #[test]
    fn names_are_checked_without_panicking_and_refusals_say_why(
        s in text(r"[a-zA-Z0-9./_-]{0,300}"),
    ) {
        for check in [
            names::validate_label_key,
            names::validate_label_value,
            names::validate_dns1123_label,
            names::validate_dns1123_subdomain,
        ] {
            if let Err(e) = check(&s) {
                prop_assert!(!e.is_empty());
            }
        }
        if let Err(e) = names::validate_qualified_name(&s, "annotation key") {
            prop_assert!(e.starts_with("annotation key"), "{}", e);
        }
    }

    #[test]
    fn cron_schedules_never_panic(
        s in text(r"(@(yearly|monthly|weekly|daily|hourly|every [0-9a-z]{0,6})|([0-9*/,-]{1,8} ){4}[0-9*/,A-Za-z-]{1,8})"),
        tz in proptest::option::of(text(r"[A-Za-z_/+-]{0,24}")),
    ) {
        match Schedule::parse(&s, tz.as_deref()) {
            Ok(schedule) => {
                let _ = schedule.next_after(std::time::SystemTime::now());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn durations_never_panic_and_refusals_say_what_is_accepted(
        s in text(r"[+-]?[0-9]{0,40}(\.[0-9]{0,8})?(ms|s|m|h|d|e[0-9]{1,3})?"),
    ) {
        match skiff::duration::parse_duration(&s) {
            Ok(d) => {
                // The same span written in milliseconds reads back alike (to
                // the millisecond, which that form keeps).
                let again = skiff::duration::parse_duration(&format!("{}ms", d.as_millis()));
                prop_assert!(
                    again.as_ref().is_ok_and(|a| a.as_millis() == d.as_millis()),
                    "{:?} -> {:?}",
                    d,
                    again
                );
            }
            Err(e) => prop_assert!(e.contains(&format!("{:?}", s.trim())), "{}", e),
        }
    }

    #[test]
    fn cidrs_never_panic_and_round_trip(
        s in text(r"[0-9]{1,3}(\.[0-9]{1,3}){0,4}(/[0-9]{0,3})?"),
    ) {
        match s.parse::<Ipv4Cidr>() {
            Ok(c) => {
                let printed = c.to_string();
                prop_assert_eq!(printed.parse::<Ipv4Cidr>(), Ok(c), "printed as {:?}", printed);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn manifests_never_panic_and_refusals_say_why(
        cut in 0usize..WEB.len(),
        len in 0usize..40,
        insert in text(r"[a-zA-Z0-9:{}\[\], \n#&*!|>'-]{0,24}"),
    ) {
        // A real manifest with a piece cut out and something else put in.
        let mut doc = WEB.to_owned();
        let mut start = cut;
        while !doc.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (start + len).min(doc.len());
        while !doc.is_char_boundary(end) {
            end -= 1;
        }
        doc.replace_range(start..end, &insert);
        if let Err(e) = skiff::manifest::parse(&doc, "fuzz.yaml") {
            prop_assert!(!e.message.is_empty(), "{:?}", e);
            prop_assert!(e.to_string().starts_with("fuzz.yaml"), "{}", e);
        }
    }
}

/// The README's example: a Deployment and a Service.
const WEB: &str = include_str!("../examples/web.yaml");
