//! Enrichment (`spec.enrich`) through the test driver: the join as of event time, tombstones,
//! joined fields in the filter, the key and the aggregates, `asOf: latest`, `onMissing`.

use pipeline_runtime::test_driver::TestDriver;
use serde_json::{Value, json};

const HEAD: &str = "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: clicks}\nspec:\n  kafka: {bootstrapServers: 'unused:9092'}\n  source: {topic: clicks}\n  sink: {kafka: {topic: out}}\n";

fn driver(rest: &str) -> TestDriver {
    TestDriver::new(&format!("{HEAD}{rest}"), &[1]).unwrap()
}

fn click(user: i64, ts: i64) -> String {
    json!({"user_id": user, "page": "/p", "ts": ts}).to_string()
}

#[test]
fn a_click_is_joined_with_the_profile_in_force_at_its_event_time_and_a_tombstone_deletes() {
    let mut d = driver(
        "  enrich: [{name: profile, topic: profiles, key: user_id, lookup: user_id, fields: [country], timestamp: {field: updated_at}}]\n  transform: {timestamp: {field: ts}}\n",
    );
    let profile = |country: &str, at: i64| {
        Some(json!({"user_id": 7, "country": country, "updated_at": at}).to_string())
    };
    d.table("profile", None, profile("fr", 1_000).as_deref(), None)
        .unwrap();
    d.table("profile", None, profile("de", 2_000).as_deref(), None)
        .unwrap();
    d.table("profile", Some("7"), None, Some(3_000)).unwrap();
    for ts in [500, 1_500, 2_500, 3_500] {
        d.pipe("clicks", 0, None, &click(7, ts)).unwrap();
    }
    let countries: Vec<Value> = d
        .outputs()
        .into_iter()
        .map(|o| o.value["profile"].clone())
        .collect();
    assert_eq!(
        countries,
        [
            Value::Null,
            json!({"country": "fr"}),
            json!({"country": "de"}),
            Value::Null
        ],
        "the version in force at 500, 1500, 2500 and 3500 (deleted at 3000)"
    );
}

#[test]
fn a_joined_field_filters_and_keys_a_windowed_count_with_the_last_country_of_a_session() {
    let mut d = driver(
        "  enrich: [{name: profile, topic: profiles, lookup: user_id}]\n  transform: {filter: '!record.profile.bot', keyBy: profile.country, timestamp: {field: ts}}\n  window: {tumbling: {size: 10s}}\n  aggregates: [{name: clicks, function: count}, {name: last_user, function: last, field: user_id}]\n",
    );
    for (user, country, bot) in [
        (1, "fr", false),
        (2, "fr", false),
        (3, "de", false),
        (4, "fr", true),
    ] {
        let value = json!({"country": country, "bot": bot}).to_string();
        d.table("profile", Some(&user.to_string()), Some(&value), Some(0))
            .unwrap();
    }
    for (user, ts) in [(1, 1_000), (3, 2_000), (4, 3_000), (2, 4_000), (1, 25_000)] {
        d.pipe("clicks", 0, None, &click(user, ts)).unwrap();
    }
    let mut windows: Vec<(String, i64, Value)> = d
        .outputs()
        .into_iter()
        .map(|o| {
            let v = o.value;
            (
                v["country"].as_str().unwrap().to_owned(),
                v["clicks"].as_i64().unwrap(),
                v["last_user"].clone(),
            )
        })
        .collect();
    windows.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        windows,
        [("de".into(), 1, json!(3)), ("fr".into(), 2, json!(2))],
        "the bot's click is filtered out by its joined field; keyed by the joined country"
    );
}

#[test]
fn as_of_latest_joins_the_version_read_last_whatever_its_time() {
    let mut d = driver(
        "  enrich: [{name: profile, topic: profiles, lookup: user_id, asOf: latest, fields: [tier]}]\n  transform: {timestamp: {field: ts}}\n",
    );
    d.table(
        "profile",
        Some("7"),
        Some(r#"{"tier": "gold"}"#),
        Some(5_000),
    )
    .unwrap();
    d.pipe("clicks", 0, None, &click(7, 1)).unwrap();
    assert_eq!(d.outputs()[0].value["profile"], json!({"tier": "gold"}));
}

#[test]
fn on_missing_drop_and_dead_letter_and_a_later_entry_looks_up_an_earlier_join() {
    let mut d = driver(
        "  deadLetter: {topic: dlq}\n  enrich:\n    - {name: profile, topic: profiles, lookup: user_id, onMissing: drop}\n    - {name: org, topic: orgs, lookup: profile.org, onMissing: deadLetter, asOf: latest}\n",
    );
    d.table("profile", Some("7"), Some(r#"{"org": 42}"#), Some(0))
        .unwrap();
    d.table("profile", Some("8"), Some(r#"{"org": 43}"#), Some(0))
        .unwrap();
    d.table("org", Some("42"), Some(r#"{"name": "acme"}"#), Some(0))
        .unwrap();
    for user in [7, 8, 9] {
        d.pipe_at("clicks", 0, None, click(user, 10).as_bytes(), Some(10))
            .unwrap();
    }
    let out = d.outputs();
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].value["org"],
        json!({"name": "acme"}),
        "key 42 matched as text"
    );
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1, "user 9 dropped, user 8's org missing");
    assert_eq!(dead[0].stage, "enrich");
    assert!(
        dead[0].error.contains("no version of key \"43\""),
        "{}",
        dead[0].error
    );
}

#[test]
fn the_clickstream_example_s_bot_filter_passes_users_without_a_profile() {
    let mut d = driver(
        "  enrich: [{name: profile, topic: profiles, lookup: user_id, fields: [bot]}]\n  transform: {filter: '!(record.profile != null && record.profile.bot == true)', timestamp: {field: ts}}\n",
    );
    d.table("profile", Some("1"), Some(r#"{"bot": true}"#), Some(0))
        .unwrap();
    d.table("profile", Some("2"), Some(r#"{"bot": false}"#), Some(0))
        .unwrap();
    for user in [1, 2, 3] {
        d.pipe("clicks", 0, None, &click(user, 10)).unwrap();
    }
    let users: Vec<Value> = d
        .outputs()
        .into_iter()
        .map(|o| o.value["user_id"].clone())
        .collect();
    assert_eq!(users, [json!(2), json!(3)]);
    assert!(d.dead_letters().is_empty());
}

#[test]
fn an_avro_table_is_decoded_with_its_schema_and_a_malformed_datum_is_refused() {
    let schema = r#"{"type": "record", "name": "Profile", "fields": [{"name": "user_id", "type": "long"}, {"name": "country", "type": "string"}, {"name": "updated_at", "type": "long"}]}"#;
    let mut d = driver(&format!(
        "  enrich: [{{name: profile, topic: profiles, format: {{type: avro, schema: '{schema}'}}, key: user_id, lookup: user_id, fields: [country], timestamp: {{field: updated_at}}}}]\n  transform: {{timestamp: {{field: ts}}}}\n"
    ));
    let parsed = apache_avro::Schema::parse_str(schema).unwrap();
    let datum = |country: &str, at: i64| {
        let record = apache_avro::types::Value::Record(vec![
            ("user_id".into(), apache_avro::types::Value::Long(7)),
            (
                "country".into(),
                apache_avro::types::Value::String(country.into()),
            ),
            ("updated_at".into(), apache_avro::types::Value::Long(at)),
        ]);
        apache_avro::to_avro_datum(&parsed, record).unwrap()
    };
    d.table_bytes("profile", None, Some(&datum("fr", 1_000)), None)
        .unwrap();
    d.table_bytes("profile", None, Some(&datum("de", 2_000)), None)
        .unwrap();
    let bad = d.table_bytes("profile", None, Some(&[0xff, 0xff, 0xff]), None);
    assert!(bad.unwrap_err().contains("undecodable"));
    for ts in [1_500, 2_500] {
        d.pipe("clicks", 0, None, &click(7, ts)).unwrap();
    }
    let countries: Vec<Value> = d
        .outputs()
        .into_iter()
        .map(|o| o.value["profile"]["country"].clone())
        .collect();
    assert_eq!(countries, [json!("fr"), json!("de")]);
}

#[test]
fn a_windowed_job_reads_joined_fields_for_its_aggregates_through_a_chain_of_tables() {
    // No filter and keyed as the source is: the rows stay beside the record (not copied in).
    let mut d = driver(
        "  enrich:\n    - {name: profile, topic: profiles, lookup: user_id, fields: [country, org_id]}\n    - {name: org, topic: orgs, lookup: profile.org_id, asOf: latest}\n  transform: {keyBy: user_id, sourceKeyed: true, timestamp: {field: ts}}\n  window: {tumbling: {size: 10s}}\n  aggregates: [{name: clicks, function: count}, {name: country, function: last, field: profile.country}, {name: seats, function: max, field: org.seats}]\n",
    );
    let profile = |country: &str, org: i64| json!({"country": country, "org_id": org}).to_string();
    d.table("profile", Some("7"), Some(&profile("fr", 1)), Some(0))
        .unwrap();
    d.table("profile", Some("7"), Some(&profile("de", 2)), Some(5_000))
        .unwrap();
    d.table("org", Some("1"), Some(r#"{"seats": 10}"#), Some(0))
        .unwrap();
    d.table("org", Some("2"), Some(r#"{"seats": 50}"#), Some(0))
        .unwrap();
    for ts in [1_000, 4_000, 6_000, 25_000] {
        d.pipe("clicks", 0, None, &click(7, ts)).unwrap();
    }
    let windows: Vec<Value> = d.outputs().into_iter().map(|o| o.value).collect();
    assert_eq!(windows.len(), 1, "{windows:?}");
    assert_eq!(windows[0]["clicks"], 3);
    assert_eq!(windows[0]["country"], "de", "the version in force at 6000");
    assert_eq!(
        windows[0]["seats"], 50.0,
        "the org of the profile in force at 6000"
    );
}
