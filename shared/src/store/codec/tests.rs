//! The codec's tests: every field round-trips, writes touch only what
//! changed, usual values fit a listpack, and a bad value is an error naming
//! its field.

use std::collections::HashMap;

use super::*;

fn config() -> MonitorConfig {
    MonitorConfig {
        name: "nightly backup".into(),
        timeout: 3600,
        interval: 600,
        channels: vec!["abcdefgh12345678".into(), "ops-team_2".into()],
        created_at: 1_763_940_000_000,
        token_hash: crate::token::hash("a token"),
        token_hint: "AbCd…".into(),
        remind_every: Some(900),
        confirm: 3,
    }
}

fn state() -> MonitorState {
    MonitorState {
        status: Status::Down,
        deadline: Some(1_763_943_600_000),
        last_beat_at: Some(1_763_940_000_001),
        last_seq: u64::MAX,
        since: -5,
        changes: 7,
        misses: 2,
    }
}

/// What Redis would hold after `writes` on `hash`.
fn apply(hash: &mut HashMap<&'static str, String>, writes: &Writes) {
    for (f, v) in &writes.set {
        hash.insert(f.key(), v.clone());
    }
    for f in &writes.unset {
        hash.remove(f.key());
    }
}

/// What `HMGET` of [`Field::ALL`] answers for `hash`.
fn hmget(hash: &HashMap<&'static str, String>) -> Vec<Option<String>> {
    Field::ALL
        .iter()
        .map(|f| hash.get(f.key()).cloned())
        .collect()
}

fn stored(cfg: &MonitorConfig, st: &MonitorState, ver: u64) -> HashMap<&'static str, String> {
    let mut hash = HashMap::new();
    apply(&mut hash, Writes::default().config(cfg).state(st));
    hash.insert(VER, ver.to_string());
    hash
}

fn round_trip(cfg: &MonitorConfig, st: &MonitorState) -> Monitor {
    decode("m1", hmget(&stored(cfg, st, 42)))
        .expect("decodes")
        .expect("exists")
}

#[test]
fn fields_are_listed_in_declaration_order_with_distinct_keys() {
    for (i, f) in Field::ALL.iter().enumerate() {
        assert_eq!(*f as usize, i, "{f:?}");
    }
    let mut keys: Vec<&str> = Field::ALL.iter().map(|f| f.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), Field::ALL.len());
}

#[test]
fn every_field_round_trips() {
    let (cfg, st) = (config(), state());
    let m = round_trip(&cfg, &st);
    assert_eq!(
        (m.id.as_str(), &m.cfg, &m.state, m.ver),
        ("m1", &cfg, &st, 42)
    );
}

#[test]
fn absent_optional_values_round_trip_as_none() {
    let cfg = MonitorConfig {
        channels: Vec::new(),
        remind_every: None,
        ..config()
    };
    let st = MonitorState::new(1_763_940_000_000);
    let hash = stored(&cfg, &st, 0);
    for f in [Field::RemindEvery, Field::Deadline, Field::LastBeatAt] {
        assert!(!hash.contains_key(f.key()), "{f:?} is not stored");
    }
    assert_eq!(hash[Field::Channels.key()], "");
    let m = round_trip(&cfg, &st);
    assert_eq!((m.cfg, m.state), (cfg, st));
}

#[test]
fn a_value_that_becomes_none_is_removed() {
    let mut hash = stored(&config(), &state(), 1);
    let cfg = MonitorConfig {
        remind_every: None,
        ..config()
    };
    let st = MonitorState {
        deadline: None,
        last_beat_at: None,
        ..state()
    };
    apply(&mut hash, Writes::default().config(&cfg).state(&st));
    let m = decode("m1", hmget(&hash)).unwrap().unwrap();
    assert_eq!((m.cfg, m.state), (cfg, st));
}

#[test]
fn writing_only_the_changed_state_fields_gives_the_new_state() {
    let prior = state();
    let beat = MonitorState {
        deadline: Some(1_763_950_000_000),
        last_beat_at: Some(1_763_949_000_000),
        last_seq: 9,
        ..prior.clone()
    };
    let cleared = MonitorState {
        status: Status::Up,
        deadline: None,
        last_beat_at: None,
        last_seq: 0,
        since: 12,
        changes: 8,
        misses: 0,
    };
    for next in [beat.clone(), cleared, prior.clone()] {
        let mut hash = stored(&config(), &prior, 1);
        let mut writes = Writes::default();
        writes.state_since(&prior, &next);
        apply(&mut hash, &writes);
        let m = decode("m1", hmget(&hash)).unwrap().unwrap();
        assert_eq!(m.state, next);
    }
    let mut writes = Writes::default();
    writes.state_since(&prior, &beat);
    let fields: Vec<Field> = writes.set.iter().map(|(f, _)| *f).collect();
    assert_eq!(
        (fields, writes.unset),
        (
            vec![Field::Deadline, Field::LastBeatAt, Field::LastSeq],
            vec![]
        ),
        "a beat writes only what it moved"
    );
}

#[test]
fn an_empty_optional_value_reads_as_none() {
    let mut hash = stored(&config(), &state(), 1);
    for f in [Field::RemindEvery, Field::Deadline, Field::LastBeatAt] {
        hash.insert(f.key(), String::new());
    }
    let m = decode("m1", hmget(&hash)).unwrap().unwrap();
    assert_eq!(
        (m.cfg.remind_every, m.state.deadline, m.state.last_beat_at),
        (None, None, None)
    );
}

#[test]
fn every_status_round_trips() {
    for status in [Status::New, Status::Up, Status::Down, Status::Paused] {
        let st = MonitorState { status, ..state() };
        assert_eq!(round_trip(&config(), &st).state.status, status);
        // The same words as the JSON the API shows.
        assert_eq!(
            serde_json::to_value(status).unwrap(),
            status_str(status),
            "{status:?}"
        );
    }
}

#[test]
fn usual_values_fit_a_listpack() {
    let cfg = MonitorConfig {
        name: "n".repeat(60),
        ..config()
    };
    let st = MonitorState {
        last_seq: u64::MAX,
        ..state()
    };
    for (f, v) in &Writes::default().config(&cfg).state(&st).set {
        assert!(v.len() <= 64, "{f:?}: {} bytes", v.len());
    }
}

#[test]
fn channel_ids_that_cannot_be_comma_joined_are_kept_as_json() {
    for channels in [
        vec!["a,b".into(), "c".into()],
        vec![ChannelId::default()],
        vec!["[x".into()],
        vec!["é".into(), "a b".into()],
    ] {
        let channels: Vec<ChannelId> = channels;
        let encoded = encode_channels(&channels);
        assert!(encoded.starts_with('['), "{encoded}");
        let cfg = MonitorConfig {
            channels: channels.clone(),
            ..config()
        };
        assert_eq!(round_trip(&cfg, &state()).cfg.channels, channels);
    }
    assert_eq!(
        encode_channels(&["abc".into(), "d-e_f".into()]),
        "abc,d-e_f"
    );
    assert_eq!(encode_channels(&[]), "");
}

#[test]
fn token_hashes_are_kept_in_base64url() {
    // RFC 4648 test vector: SHA-256("abc").
    let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let stored = encode_token_hash(hex);
    assert_eq!(stored, "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    assert_eq!(decode_token_hash(Field::TokenHash, &stored).unwrap(), hex);
    for n in 0..50 {
        let hex = crate::token::hash(&n.to_string());
        let stored = encode_token_hash(&hex);
        assert_eq!(stored.len(), 43);
        assert_eq!(decode_token_hash(Field::TokenHash, &stored).unwrap(), hex);
    }
}

#[test]
fn other_token_hashes_are_kept_as_they_are() {
    let upper = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
    for hash in ["", "h", "!x", upper, &"a".repeat(63), &"a".repeat(65)] {
        let stored = encode_token_hash(hash);
        assert_eq!(stored, format!("!{hash}"));
        let cfg = MonitorConfig {
            token_hash: hash.to_owned(),
            ..config()
        };
        assert_eq!(round_trip(&cfg, &state()).cfg.token_hash, hash);
    }
}

#[test]
fn a_missing_hash_is_none() {
    assert_eq!(decode("m1", vec![None; Field::ALL.len()]), Ok(None));
    assert_eq!(decode("m1", Vec::new()), Ok(None));
}

#[test]
fn a_missing_required_field_is_an_error() {
    let required = Field::ALL
        .iter()
        .filter(|f| !matches!(f, Field::RemindEvery | Field::Deadline | Field::LastBeatAt));
    for &f in required {
        let mut hash = stored(&config(), &state(), 1);
        hash.remove(f.key());
        let err = decode("m1", hmget(&hash)).unwrap_err();
        assert_eq!(err.field, f);
        assert_eq!(err.problem, "is missing");
    }
}

#[test]
fn a_value_that_does_not_parse_is_an_error() {
    let cases = [
        (Field::Timeout, "abc"),
        (Field::Timeout, "-1"),
        (Field::Timeout, "4294967296"),
        (Field::Interval, "1.5"),
        (Field::CreatedAt, ""),
        (Field::RemindEvery, "soon"),
        (Field::Confirm, " 1"),
        (Field::Status, "UP"),
        (Field::Status, ""),
        (Field::Deadline, "x"),
        (Field::LastBeatAt, "1e3"),
        (Field::LastSeq, "-1"),
        (Field::Since, "now"),
        (Field::Changes, ""),
        (Field::Misses, "many"),
        (Field::Ver, "v1"),
        (Field::Channels, "a,,b"),
        (Field::Channels, ","),
        (Field::Channels, "a b"),
        (Field::Channels, "[\"a\""),
        (Field::TokenHash, ""),
        (
            Field::TokenHash,
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa",
        ),
        (
            Field::TokenHash,
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0A",
        ),
        (
            Field::TokenHash,
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa1",
        ),
        (
            Field::TokenHash,
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0",
        ),
    ];
    for (f, raw) in cases {
        let mut hash = stored(&config(), &state(), 1);
        hash.insert(f.key(), raw.to_owned());
        let err = decode("m1", hmget(&hash)).unwrap_err();
        assert_eq!(err.field, f, "{raw:?}");
        assert!(err.problem.contains(raw), "{err}");
    }
}

#[test]
fn errors_name_the_model_field() {
    let err = invalid(Field::Timeout, "is missing");
    assert_eq!(err.to_string(), "timeout is missing");
}
