//! The profile table that matches the `clicks-json` workload (`loadgen --profiles N`): one
//! profile per user `user-000000` … written before the clicks, then updates and deletions
//! (tombstones) among them, so an enriched pipeline (`spec.enrich`, as in
//! `manifests/examples/clickstream-sessions.yaml`) joins versions that change during the run.

use crate::demo::Rng;

const COUNTRIES: [&str; 8] = ["fr", "de", "it", "es", "pt", "nl", "pl", "se"];
const TIERS: [&str; 3] = ["free", "silver", "gold"];

/// How the profile table is written.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileOptions {
    /// The table's topic (it must exist; compacted in production).
    pub topic: String,
    /// Users with a profile: `user-000000` up to this many.
    pub users: u64,
    /// Table records written per click during the run, 0..1.
    pub update_share: f64,
    /// Share of those that delete the profile (a tombstone), 0..1.
    pub delete_share: f64,
}

/// A table record: the user key and the profile (`None`: a tombstone), at `updated_at`.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRecord {
    /// The Kafka key (the user id).
    pub key: String,
    /// The JSON value, `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Its time (the value's `updated_at`; a tombstone's Kafka timestamp).
    pub updated_at: i64,
}

/// Writes the profiles' records.
pub struct ProfileGenerator {
    options: ProfileOptions,
    rng: Rng,
}

impl ProfileGenerator {
    /// A generator seeded with `seed`.
    pub fn new(options: ProfileOptions, seed: u64) -> Self {
        Self {
            options,
            rng: Rng::new(seed ^ 0x5eed_f11e),
        }
    }

    /// The profile of user `index` as of `now_ms`.
    pub fn profile(&mut self, index: u64, now_ms: i64) -> ProfileRecord {
        let key = format!("user-{index:06}");
        let r = &mut self.rng;
        let country = COUNTRIES[r.below(COUNTRIES.len() as u64) as usize];
        let tier = TIERS[r.below(TIERS.len() as u64) as usize];
        // About 2% of users are bots: clickstream-sessions.yaml filters them out.
        let bot = r.below(50) == 0;
        let value = format!(
            r#"{{"user_id":"{key}","country":"{country}","tier":"{tier}","bot":{bot},"updated_at":{now_ms}}}"#
        );
        ProfileRecord {
            key,
            value: Some(value.into_bytes()),
            updated_at: now_ms,
        }
    }

    /// Every user's first profile, at `now_ms`.
    pub fn initial(&mut self, now_ms: i64) -> impl Iterator<Item = ProfileRecord> + '_ {
        (0..self.options.users).map(move |i| self.profile(i, now_ms))
    }

    /// After a click at `now_ms`: an update or a deletion of a random user's profile, in
    /// `update_share` of the calls.
    pub fn after_click(&mut self, now_ms: i64) -> Option<ProfileRecord> {
        let users = self.options.users;
        let share = |r: &mut Rng, p: f64| (r.below(1_000_000) as f64) < p * 1_000_000.0;
        if users == 0 || !share(&mut self.rng, self.options.update_share) {
            return None;
        }
        let index = self.rng.below(users);
        if share(&mut self.rng, self.options.delete_share) {
            return Some(ProfileRecord {
                key: format!("user-{index:06}"),
                value: None,
                updated_at: now_ms,
            });
        }
        Some(self.profile(index, now_ms))
    }

    /// The options.
    pub fn options(&self) -> &ProfileOptions {
        &self.options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_match_the_click_keys_and_updates_and_deletions_come_in_their_shares() {
        let mut g = ProfileGenerator::new(
            ProfileOptions {
                topic: "user-profiles".into(),
                users: 1_000,
                update_share: 0.1,
                delete_share: 0.2,
            },
            7,
        );
        let first: Vec<_> = g.initial(5).collect();
        assert_eq!(first.len(), 1_000);
        assert_eq!(first[42].key, "user-000042");
        let v: serde_json::Value =
            serde_json::from_slice(first[42].value.as_ref().unwrap()).unwrap();
        assert_eq!(v["user_id"], "user-000042");
        assert_eq!(v["updated_at"], 5);
        assert!(v["country"].is_string() && v["tier"].is_string() && v["bot"].is_boolean());
        let n = 100_000;
        let written: Vec<_> = (0..n).filter_map(|i| g.after_click(i)).collect();
        let share = written.len() as f64 / n as f64;
        assert!((share - 0.1).abs() < 0.01, "updates {share}");
        let deleted = written.iter().filter(|r| r.value.is_none()).count() as f64;
        assert!((deleted / written.len() as f64 - 0.2).abs() < 0.02);
        assert!(written.iter().all(|r| r.key.starts_with("user-")));
    }
}
