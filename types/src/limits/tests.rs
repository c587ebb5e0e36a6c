use serde_json::json;

use super::*;

/// Every value of a profile as an explicit configuration.
fn explicit(l: &Limits) -> LimitsConfig {
    let value = serde_json::to_value(l).expect("limits serialize");
    serde_json::from_value(value).expect("the effective limits read back as a [limits] table")
}

#[test]
fn every_profile_value_is_within_the_bounds_of_its_limit() {
    for p in [Profile::Default, Profile::Cloudflare] {
        let problems = explicit(&Limits::profile(p)).problems("limits.");
        assert!(problems.is_empty(), "{p:?}: {problems:?}");
    }
}

#[test]
fn the_table_lists_every_field_once_with_both_spellings() {
    let config = explicit(&Limits::default());
    let toml_keys = serde_json::to_value(&config).expect("serializes");
    let spec: LimitsSpec = serde_json::from_value(toml_keys.clone()).expect("snake_case accepted");
    let camel = serde_json::to_value(&spec).expect("serializes");
    assert_eq!(LIMITS.len(), toml_keys.as_object().map_or(0, |m| m.len()));
    assert_eq!(LIMITS.len(), camel.as_object().map_or(0, |m| m.len()));
    for info in LIMITS {
        assert!(toml_keys.get(info.name).is_some(), "{}", info.name);
        assert!(camel.get(info.json_name).is_some(), "{}", info.json_name);
        assert!(!info.description().is_empty());
    }
    assert!(LIMITS.iter().any(|i| i.name == "max_retained_bytes"));
}

#[test]
fn a_tenant_cannot_raise_a_limit_above_the_brokers() {
    let broker = LimitsConfig {
        max_connections: Some(100),
        max_packet_size: Some(4096),
        ..LimitsConfig::default()
    }
    .resolve();
    let spec = LimitsSpec {
        max_connections: Some(1_000),
        max_packet_size: Some(1024),
        ..LimitsSpec::default()
    };
    let (l, notes) = broker.tightened(&spec);
    assert_eq!(l.max_connections, 100, "clamped to the broker's");
    assert_eq!(l.max_packet_size, 1024, "a tighter value applies");
    assert_eq!(
        notes,
        ["maxConnections 1000 is above the broker's 100; 100 applies"]
    );
}

#[test]
fn zero_means_no_limit_for_the_rate_and_the_keep_alive_ceiling() {
    let unlimited = Limits::default();
    assert_eq!(unlimited.max_publish_rate, 0.0);
    let spec = LimitsSpec {
        max_publish_rate: Some(5.0),
        max_keep_alive_secs: Some(60),
        ..LimitsSpec::default()
    };
    let (l, notes) = unlimited.tightened(&spec);
    assert_eq!(l.max_publish_rate, 5.0, "5/s is stricter than none");
    assert_eq!(l.max_keep_alive_secs, 60);
    assert!(notes.is_empty(), "{notes:?}");

    let limited = LimitsConfig {
        max_publish_rate: Some(10.0),
        ..LimitsConfig::default()
    }
    .resolve();
    let none = LimitsSpec {
        max_publish_rate: Some(0.0),
        ..LimitsSpec::default()
    };
    let (l, notes) = limited.tightened(&none);
    assert_eq!(l.max_publish_rate, 10.0, "a tenant cannot lift the rate");
    assert_eq!(notes.len(), 1, "{notes:?}");
}

#[test]
fn operator_only_limits_from_a_tenant_are_ignored_and_named() {
    let spec = LimitsSpec {
        connect_timeout_secs: Some(300),
        slow_consumer_grace_ms: Some(3_600_000),
        max_topic_depth: Some(4),
        ..LimitsSpec::default()
    };
    assert_eq!(
        spec.operator_only(),
        ["connectTimeoutSecs", "slowConsumerGraceMs"]
    );
    let (l, notes) = Limits::default().tightened(&spec);
    assert_eq!(l.connect_timeout(), Duration::from_secs(10));
    assert_eq!(l.slow_consumer_grace(), Duration::from_secs(5));
    assert_eq!(l.max_topic_depth, 4);
    assert_eq!(notes.len(), 2, "{notes:?}");
    let tenant = spec.tenant_part();
    assert!(tenant.operator_only().is_empty());
    assert_eq!(tenant.max_topic_depth, Some(4));
}

#[test]
fn a_tenant_profile_applies_its_values_within_the_brokers() {
    let (l, notes) = Limits::default().tightened(&LimitsSpec {
        profile: Some(Profile::Cloudflare),
        ..LimitsSpec::default()
    });
    let cf = Limits::profile(Profile::Cloudflare);
    assert_eq!(l.max_topic_depth, cf.max_topic_depth);
    assert_eq!(l.max_connections, cf.max_connections);
    assert_eq!(
        l.connect_timeout_secs,
        Limits::default().connect_timeout_secs
    );
    assert_eq!(
        l.max_username_length,
        Limits::default().max_username_length,
        "operator-only, even through a profile"
    );
    assert!(notes.is_empty(), "a profile's values are not reported");
    // A generous tenant profile over a strict broker changes nothing.
    let (l, _) = cf.tightened(&LimitsSpec {
        profile: Some(Profile::Default),
        ..LimitsSpec::default()
    });
    assert_eq!(l, cf);
}

#[test]
fn a_spec_reads_camel_case_and_snake_case_keys_and_refuses_unknown_ones() {
    let spec: LimitsSpec = serde_json::from_value(json!({
        "profile": "cloudflare", "maxConnections": 5, "max_topic_depth": 3, "maxPublishRate": null
    }))
    .expect("valid");
    assert_eq!(spec.profile, Some(Profile::Cloudflare));
    assert_eq!(spec.max_connections, Some(5));
    assert_eq!(spec.max_topic_depth, Some(3));
    assert_eq!(spec.max_publish_rate, None);
    assert_eq!(
        serde_json::to_value(&spec).expect("serializes"),
        json!({"profile": "cloudflare", "maxConnections": 5, "maxTopicDepth": 3})
    );
    let err = serde_json::from_value::<LimitsSpec>(json!({"maxConections": 5}))
        .expect_err("unknown key")
        .to_string();
    assert!(err.contains("unknown limit `maxConections`"), "{err}");
    assert!(err.contains("maxConnections"), "{err}");
    let err = serde_json::from_value::<LimitsSpec>(json!({"maxConnections": -1}))
        .expect_err("negative")
        .to_string();
    assert!(err.contains("limit `maxConnections`"), "{err}");
    assert!(serde_json::from_value::<LimitsSpec>(json!([1])).is_err());
}

#[test]
fn bounds_are_checked_with_the_key_named() {
    let spec = LimitsSpec {
        max_packet_size: Some(10),
        max_publish_rate: Some(f64::NAN),
        max_connections: Some(5),
        ..LimitsSpec::default()
    };
    let problems = spec.problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("maxPacketSize 10 is outside 64..=268435455"));
    assert!(problems[1].contains("maxPublishRate"));
    let config = LimitsConfig {
        receive_maximum: Some(0),
        ..LimitsConfig::default()
    };
    assert_eq!(
        config.problems("limits."),
        ["limits.receive_maximum 0 is outside 1..=65535"]
    );
}

#[test]
fn stored_limits_are_read_leniently() {
    let (spec, skipped) = LimitsSpec::lenient(&json!({
        "max_connections": 10, "maxTopicDepth": "deep", "whatever": true
    }));
    assert_eq!(spec.max_connections, Some(10));
    assert_eq!(spec.max_topic_depth, None);
    assert_eq!(skipped.len(), 2);
    assert!(LimitsSpec::lenient(&json!("x")).0.is_empty());
}

#[test]
fn a_config_table_uses_snake_case_refuses_unknown_keys_and_overlays_its_profile() {
    let c: LimitsConfig =
        toml::from_str("profile = \"cloudflare\"\nmax_publish_rate = 10\n").expect("valid");
    assert_eq!(c.max_publish_rate, Some(10.0), "an integer rate is read");
    assert!(toml::from_str::<LimitsConfig>("maxConnections = 1\n").is_err());
    let listener = LimitsConfig {
        max_packet_size: Some(1024),
        ..LimitsConfig::default()
    };
    let l = c.overlay(&listener).resolve();
    assert_eq!(l.max_packet_size, 1024);
    assert_eq!(
        l.max_topic_depth, 8,
        "the global profile stays when the listener names none"
    );
    let spec = LimitsSpec {
        profile: Some(Profile::Cloudflare),
        max_connections: Some(10),
        ..LimitsSpec::default()
    };
    assert_eq!(
        toml::to_string(&spec.to_config()).expect("renders"),
        "profile = \"cloudflare\"\nmax_connections = 10\n"
    );
}
